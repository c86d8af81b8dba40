#!/usr/bin/env bash
# Stages what the lent GPU machine needs into .gpu/ (git-ignored through .git/info/exclude): the
# native sources and build files, the compiled JavaScript (dist/), the GPU tests and benchmarks and
# the golden cases. Run `npx tsc -p tsconfig.json` and ../shared/device/prepare first; then call the
# device tool with carry [".device", ".gpu"] and a command that starts with
#   cd .gpu && ln -sfn ../.device/node_modules node_modules && bash ../.device/on-device ...
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
golden=${LORAKIT_GOLDEN:-$root/../shared/golden}
rm -rf .gpu
mkdir -p .gpu
cp -r native CMakeLists.txt package.json binding.gyp dist test-gpu bench scripts .gpu/
rm -rf .gpu/bench/results
cp -r "$golden" .gpu/golden
du -sh .gpu
