#!/usr/bin/env bash
# Stages several commits for one A/B device call: the i-th ref goes to .gpu-a, .gpu-b, ... (git-ignored),
# each built by that commit's own scripts/gpu-stage.sh from a temporary worktree (its dist/ compiled there
# with this checkout's node_modules), so bench/gpu_ab.sh can build, test and time them side by side:
#   bash scripts/gpu-stage-refs.sh main decode-adjacent-chunks dora-stacked
#   then the device tool with carry [".device", ".gpu-a", ".gpu-b", ".gpu-c"] and
#   AB_MORE=.gpu-c bash .gpu-c/bench/gpu_ab.sh $OUT/ab .gpu-a .gpu-b 'node bench/...'
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
[ $# -ge 1 ] || { echo "usage: $0 REF [REF...] (at most 8)" >&2; exit 2; }
[ $# -le 8 ] || { echo "$0: at most 8 refs (.gpu-a to .gpu-h)" >&2; exit 2; }
export LORAKIT_GOLDEN=${LORAKIT_GOLDEN:-$root/../shared/golden}
letters=(a b c d e f g h)
i=0
work=
# A failed stage leaves no worktree behind (git would keep listing it).
trap '[ -z "$work" ] || git worktree remove --force "$work" 2>/dev/null || true' EXIT
for ref in "$@"; do
  sha=$(git rev-parse --verify --quiet "$ref^{commit}") || { echo "$0: no commit '$ref'" >&2; exit 2; }
  dest=.gpu-${letters[$i]}
  work=$(mktemp -d "${TMPDIR:-/tmp}/lorakit-stage.XXXXXX")
  git worktree add --quiet --detach "$work" "$sha"
  (cd "$work" && ln -s "$root/node_modules" node_modules && npx tsc -p tsconfig.json && bash scripts/gpu-stage.sh > /dev/null)
  rm -rf "$dest"
  mv "$work/.gpu" "$dest"
  git worktree remove --force "$work"
  work=
  echo "$dest: $ref ($(git rev-parse --short "$sha")), $(du -sh "$dest" | cut -f1)"
  i=$((i + 1))
done
