#!/usr/bin/env bash
# Packs lorakit, installs the tarball into an empty project (which builds the addon from source),
# and checks that require() and import both work and compute a LoRA forward.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && npm pack --silent --pack-destination "$work" >/dev/null)
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund ./lorakit-*.tgz >/dev/null
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
console.log('import ok', backendInfo().cpuPath);
JS
node check.cjs
node check.mjs
# the bin: write a small checkpoint and inspect it through npx
node -e "const { writeSafetensors, Tensor } = require('lorakit'); writeSafetensors('t.safetensors', { w: Tensor.from([1, 2], [2]) });"
npx --no-install lorakit inspect t.safetensors | grep -q 'tensors: 1, parameters: 2'
echo "cli ok"
# the README's main job, shortened: trains, saves a peft adapter, merges (exit 1 if the loss falls < 10x)
npx --no-install lorakit demo --steps 200 --out demo-out --no-png >/dev/null
test -f demo-out/adapter/adapter_model.safetensors -a -f demo-out/loss_curve.svg
echo "demo ok"
echo "package check: ok"
