#!/usr/bin/env bash
# Packs lorakit (prepack builds the prebuilt binaries), installs the tarball into an empty project
# with --ignore-scripts (what npm 12 does by default) and checks that the prebuilt binary is the one
# loaded, then peft's golden Linear cases on every CPU path this machine has, require() and import,
# the CLI and the demo. A second project installs with the install script, which must build nothing.
# Prints the tarball size and the install time (goals: <= 15 MB, <= 20 s).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
golden=${LORAKIT_GOLDEN:-$(cd "$root/.." && pwd)/shared/golden}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
t0=$SECONDS
(cd "$root" && npm pack --pack-destination "$work" > "$work/pack.log" 2>&1) || { cat "$work/pack.log"; exit 1; }
grep '^prebuild: ' "$work/pack.log"
tgz=$(ls "$work"/lorakit-*.tgz)
echo "npm pack (with the prebuilt builds): $((SECONDS - t0)) s"
tar tzf "$tgz" > "$work/files.txt"  # (grep -q on a pipe would stop tar early: pipefail)
for p in linux-x64 linux-arm64; do
  grep -qx "package/prebuilds/$p/lorakit.napi.glibc.node" "$work/files.txt" || { echo "tarball lacks the $p binary"; exit 1; }
done
if grep -qE '^package/(build|build-prebuilds)/' "$work/files.txt"; then echo "tarball holds build folders"; exit 1; fi
size=$(stat -c %s "$tgz")
echo "tarball: $(awk -v s="$size" 'BEGIN { printf "%.2f MB", s / 1e6 }') ($(wc -l < "$work/files.txt") files; goal <= 15 MB)"
(( size <= 15000000 )) || { echo "tarball over 15 MB"; exit 1; }

cd "$work"
mkdir app && cd app
npm init -y >/dev/null
t0=$(date +%s.%N)
npm install --no-audit --no-fund --ignore-scripts "$tgz" >/dev/null
echo "npm install --ignore-scripts: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }') (goal <= 20 s)"
test ! -e node_modules/lorakit/build || { echo "an install with --ignore-scripts left a build folder"; exit 1; }

cat > which.cjs <<'JS'
const i = require('lorakit').backendInfo();
const want = require('path').join(process.cwd(), 'node_modules/lorakit/prebuilds', `${process.platform}-${process.arch}`, 'lorakit.napi.glibc.node');
if (i.loadedFrom !== 'prebuilt' || i.addonPath !== want) throw new Error(`expected the prebuilt ${want}, loaded ${i.loadedFrom} ${i.addonPath}`);
console.log(`loaded the prebuilt binary ${i.addonPath}; cpu paths: ${i.cpuPaths.join(', ')}`);
JS
node which.cjs

# peft's golden Linear cases (test-gpu's suite with LORAKIT_TEST_DEVICE=cpu) against the installed
# package, per CPU path: only the helpers' require of the sources becomes require('lorakit').
mkdir golden-tests
sed "s#require('../dist/io/safetensors')#require('lorakit')#; s#require('../dist')#require('lorakit')#" "$root/test-gpu/helpers.js" > golden-tests/helpers.js
grep -q "require('lorakit')" golden-tests/helpers.js || { echo "test-gpu/helpers.js no longer requires ../dist"; exit 1; }
cp "$root/test-gpu/golden_linear.test.js" golden-tests/
for p in $(node -p "require('lorakit').backendInfo().cpuPaths.join(' ')") amx-emulated; do
  used=$(LORAKIT_CPU_PATH=$p node -p "require('lorakit').backendInfo().cpuPath")
  [[ "$used" == "$p" ]] || { echo "LORAKIT_CPU_PATH=$p: got $used"; exit 1; }
  if LORAKIT_TEST_DEVICE=cpu LORAKIT_CPU_PATH=$p LORAKIT_GOLDEN=$golden node --test golden-tests/ > "golden-$p.log" 2>&1; then
    pass=$(sed -n 's/^# pass //p' "golden-$p.log")
    [[ -n "$pass" && "$pass" -gt 0 ]] || { echo "golden Linear cases, $p path: none ran"; exit 1; }
    echo "golden Linear cases, $p path: $pass passed ($(sed -n 's/^# skipped //p' "golden-$p.log") cuda-only skipped)"
  else
    echo "golden Linear cases, $p path: FAILED"; grep -B2 -A12 '^not ok' "golden-$p.log" | head -40; exit 1
  fi
done

cat > check.cjs <<'JS'
const { Tensor, LoraLinear } = require('lorakit');
const W = Tensor.from([1, 0, 0, 1], [2, 2]);
const layer = new LoraLinear({ weight: W });
layer.addAdapter('default', { r: 1, loraAlpha: 1, initLoraWeights: false, seed: 3 });
const y = layer.forward(Tensor.from([1, 2], [1, 2])).toFloat32Array();
layer.merge();
layer.eval();
const ym = layer.forward(Tensor.from([1, 2], [1, 2])).toFloat32Array();
if (Math.abs(y[0] - ym[0]) > 1e-5 || Math.abs(y[1] - ym[1]) > 1e-5) throw new Error('merged != unmerged');
console.log('require ok', Array.from(y));
JS
cat > check.mjs <<'JS'
import { Tensor, backendInfo } from 'lorakit';
const t = Tensor.from([1, 2, 3], [3], { dtype: 'bf16' });
if (t.toFloat32Array()[2] !== 3) throw new Error('bad bf16 round trip');
if (backendInfo().loadedFrom !== 'prebuilt') throw new Error('import did not load the prebuilt binary');
console.log('import ok', backendInfo().cpuPath);
JS
node check.cjs
node check.mjs
# the bin: write a small checkpoint and inspect it through npx
node -e "const { writeSafetensors, Tensor } = require('lorakit'); writeSafetensors('t.safetensors', { w: Tensor.from([1, 2], [2]) });"
npx --no-install lorakit inspect t.safetensors > inspect.txt
grep -q 'tensors: 1, parameters: 2' inspect.txt
npx --no-install lorakit info > info.txt
grep -q 'native addon:      prebuilt' info.txt || { cat info.txt; exit 1; }
echo "cli ok"
# the README's main job, shortened: trains, saves a peft adapter, merges (exit 1 if the loss falls < 10x)
npx --no-install lorakit demo --steps 200 --out demo-out --no-png >/dev/null
test -f demo-out/adapter/adapter_model.safetensors -a -f demo-out/loss_curve.svg
echo "demo ok"

# With install scripts allowed, the install script finds the prebuilt binary and builds nothing.
cd "$work" && mkdir app-scripts && cd app-scripts
npm init -y >/dev/null
npm install --no-audit --no-fund --foreground-scripts "$tgz" > install.log 2>&1 || { cat install.log; exit 1; }
grep 'lorakit: ' install.log
grep -q 'lorakit: using the prebuilt binary prebuilds/linux-x64/' install.log || { echo "the install script did not take the prebuilt binary"; exit 1; }
test ! -e node_modules/lorakit/build || { echo "the install script built from source"; exit 1; }
echo "package check: ok"
