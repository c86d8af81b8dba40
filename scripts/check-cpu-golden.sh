#!/usr/bin/env bash
# The golden-case suites of test-gpu/ run against the cpu instead of cuda, once per forced CPU path:
# peft's golden cases on every dispatch path where jest cannot run (the AVX-512/AMX Xeon of the lent
# GPU machine). Needs dist/ and the addon built; paths default to every one this CPU has.
#   scripts/check-cpu-golden.sh [path ...]     (LORAKIT_GOLDEN points at the golden folder)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
dir=.cpu-golden-tests
rm -rf "$dir"
mkdir -p "$dir"
cp test-gpu/helpers.js "$dir/"
for f in golden_linear dora embedding conv2d mixed_batch; do sed 's/cuda/cpu/g' "test-gpu/$f.test.js" > "$dir/$f.test.js"; done
paths=${*:-$(node -e "console.log(require('./dist').backendInfo().cpuPaths.join(' '))")}
status=0
for p in $paths; do
  used=$(LORAKIT_CPU_PATH=$p node -e "console.log(require('./dist').backendInfo().cpuPath)")
  if [[ "$used" != "$p" ]]; then echo "$p: not available here (got $used)"; status=1; continue; fi
  if LORAKIT_TEST_DEVICE=cpu LORAKIT_CPU_PATH=$p node --test "$dir/" > "$dir/$p.log" 2>&1; then
    echo "$p: $(grep -E '^# pass' "$dir/$p.log")"
  else
    echo "$p: FAILED"; grep -B2 -A12 '^not ok' "$dir/$p.log" | head -40; status=1
  fi
done
exit $status
