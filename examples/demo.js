#!/usr/bin/env node
// A CPU demo with no downloads: a LoRA adapter on a linear layer, forward and backward, then merge
// and unmerge, checking that merged outputs equal unmerged ones.
'use strict';
const { Tensor, LoraLinear, backendInfo } = require('..');

const inF = 512, outF = 384, n = 64, r = 16;
const rand = (len, seed) => {
  let s = seed;
  return Float32Array.from({ length: len }, () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32) * 2 - 1);
};
const W = Tensor.from(rand(outF * inF, 1).map((v) => v * 0.05), [outF, inF]);
const layer = new LoraLinear({ weight: W, bias: Tensor.zeros([outF]) });
layer.addAdapter('default', { r, loraAlpha: 32, initLoraWeights: false, seed: 7 });
console.log(`backend: ${JSON.stringify(backendInfo())}`);
console.log(`layer: in=${layer.inFeatures} out=${layer.outFeatures} r=${r} scaling=${layer.scaling.get('default')}`);

const x = Tensor.from(rand(n * inF, 2), [n, inF]);
const y = layer.forward(x);
const { dx, grads } = layer.backward(Tensor.from(rand(n * outF, 3), [n, outF]));
console.log(`forward y ${JSON.stringify(y.shape)}, backward dx ${JSON.stringify(dx.shape)}, dA ${JSON.stringify(grads.get('default').loraA.shape)}`);

layer.eval();
const yUnmerged = layer.forward(x).toFloat32Array();
layer.merge();
const yMerged = layer.forward(x).toFloat32Array();
let maxDiff = 0;
for (let i = 0; i < yMerged.length; i++) maxDiff = Math.max(maxDiff, Math.abs(yMerged[i] - yUnmerged[i]));
console.log(`merged vs unmerged output: max |diff| = ${maxDiff.toExponential(2)}`);
layer.unmerge();
console.log(`unmerged again: merged=${layer.merged}`);
if (maxDiff > 1e-3) process.exit(1);
