#!/usr/bin/env bash
# peft's golden cases on every CPU dispatch path, where jest cannot reach them (the AVX-512/AMX Xeon
# of the lent GPU machine): the golden suites of test-gpu/ run unchanged with LORAKIT_TEST_DEVICE=cpu,
# once per forced path (LORAKIT_CPU_PATH). Their cuda-vs-cpu parity tests are skipped there (they
# would compare the cpu with itself), so the counts below are real comparisons with peft only.
# Needs dist/ and the addon built; paths default to every one this CPU has.
#   scripts/check-cpu-golden.sh [path ...]     (LORAKIT_GOLDEN points at the golden folder)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
suites=(test-gpu/golden_linear.test.js test-gpu/dora.test.js test-gpu/embedding.test.js test-gpu/conv2d.test.js test-gpu/mixed_batch.test.js)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
paths=${*:-$(node -e "console.log(require('./dist').backendInfo().cpuPaths.join(' '))")}
status=0
for p in $paths; do
  used=$(LORAKIT_CPU_PATH=$p node -e "console.log(require('./dist').backendInfo().cpuPath)" 2>&1) || { echo "$p: FAILED to load: $used"; status=1; continue; }
  if [[ "$used" != "$p" ]]; then echo "$p: FAILED: not available here (got $used)"; status=1; continue; fi
  log="$logs/$p.log"
  if LORAKIT_TEST_DEVICE=cpu LORAKIT_CPU_PATH=$p node --test --test-concurrency=1 "${suites[@]}" > "$log" 2>&1; then
    pass=$(sed -n 's/^# pass //p' "$log")
    skipped=$(sed -n 's/^# skipped //p' "$log")
    if [[ -z "$pass" || "$pass" -eq 0 ]]; then echo "$p: FAILED: no golden comparison ran"; status=1; continue; fi
    echo "$p: $pass golden tests passed ($skipped cuda-only tests skipped)"
  else
    echo "$p: FAILED"; grep -B2 -A12 '^not ok' "$log" | head -40; status=1
  fi
done
exit $status
