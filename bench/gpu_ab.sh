#!/usr/bin/env bash
# A/B on the lent GPU in one device call: builds two staged trees (scripts/gpu-stage.sh output; A =
# the base, B = the candidate) in parallel, runs B's GPU tests, then each benchmark command in A and
# in B alternately (ABAB), so both sides share the card, its clocks and the call. Logs go to OUT.
#   bash .gpu-b/bench/gpu_ab.sh OUT .gpu-a .gpu-b 'node bench/x.js' 'LORAKIT_Y=1 node bench/y.js' ...
# AB_TESTS: the test files to run in B (default test-gpu/, all of them).
# AB_MORE: further candidate trees (space-separated, e.g. '.gpu-c'), built, tested and timed like B.
# A command written 'once: CMD' runs one round over the trees instead of two (profilers).
# With AB_DRY=1 nothing is built or run (the commands are echoed): check the script here first.
# Builds are waited on by pid: a bare `wait` would also wait for the tee below (bash >= 5.1).
set -uo pipefail
out=$1 a=$2 b=$3
shift 3
trees=("$a" "$b" ${AB_MORE:-})
mkdir -p "$out"
exec > >(tee -a "$out/ab.log") 2>&1
dry=${AB_DRY:-}
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }
on() {  # on DIR CMD...: runs CMD in DIR with the device's node
  local dir=$1
  shift
  if [ -n "$dry" ]; then echo "(dry) in $dir: $*"; return 0; fi
  (cd "$dir" && ln -sfn ../.device/node_modules node_modules && bash ../.device/on-device bash -c "$*")
}
stamp "A=$a B=$b${AB_MORE:+ more: $AB_MORE}; $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo no nvidia-smi)"
# Unpack node once: two on-device calls at once on a fresh machine both unpack it ("Text file busy").
on "$a" true
pids=()
for side in "${trees[@]}"; do
  on "$side" 'CUDAARCHS=90 node node_modules/cmake-js/bin/cmake-js rebuild --CDLORAKIT_CUDA=ON --log-level warn' \
    > "$out/build-$(basename "$side").log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
stamp "builds done (rc $rc)"
tail -n 5 "$out"/build-*.log
[ "$rc" = 0 ] || exit 1
for side in "${trees[@]:1}"; do
  t=$(basename "$side")
  stamp "tests in $t"
  on "$side" "LORAKIT_GOLDEN=\$PWD/golden timeout 150 node --test --test-concurrency=1 ${AB_TESTS:-test-gpu/} > '$out/test-gpu-$t.txt' 2>&1; echo test-gpu rc \$?"
  grep -E '^# (tests|pass|fail)' "$out/test-gpu-$t.txt" 2>/dev/null
  grep -B2 -A12 '^not ok' "$out/test-gpu-$t.txt" 2>/dev/null | head -60
done
for cmd in "$@"; do
  rounds="1 2"
  case $cmd in once:*) cmd=${cmd#once:}; rounds=1 ;; esac
  for round in $rounds; do
    for side in "${trees[@]}"; do
      stamp "round $round, $(basename "$side"): $cmd"
      on "$side" "timeout 120 env $cmd"
    done
  done
done
stamp "done"
