#!/usr/bin/env bash
# Builds and runs scripts/exact-codec/fuzz.cc (200,000 random segments, every dtype, densities 0 to
# 100%, short segments, corrupted streams) where the CPU has AVX-512 VBMI2; prints ok or FAIL.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ! grep -q avx512_vbmi2 /proc/cpuinfo; then echo "skipped: this CPU has no AVX-512 VBMI2"; exit 0; fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
g++ -O2 -std=c++17 -I"$root/native" "$root/scripts/exact-codec/fuzz.cc" "$root/native/cpu/exact_codec_avx512.cc" -o "$out/fuzz"
"$out/fuzz"
