// Seeded benchmark inputs for the GPU benchmarks: uniform values in [-scale, scale) from xorshift,
// 16-bit (bf16 unless asked) device tensors made from them, and the adapter scale that sets a
// layer's ‖ΔW‖/‖W‖.
'use strict';
const { Tensor } = require('../dist');

function randn(n, seed, scale) {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    out[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return out;
}

const dev = (data, shape, dtype = 'bf16') => Tensor.from(data, shape, { dtype, device: 'cuda' });

function sumSq(a) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return s;
}

/** The scale that makes adapter `name`'s ‖ΔW‖ equal rel·‖W‖ (wSumSq = ‖W‖², from sumSq). */
function scaleForRelDelta(layer, name, wSumSq, rel) {
  const d = layer.getDeltaWeight(name);
  const dd = sumSq(d.toFloat32Array());
  d.dispose();
  return rel / Math.sqrt(dd / wSumSq);
}

module.exports = { randn, dev, sumSq, scaleForRelDelta };
