// Training on cuda: the AdamW/SGD classes, gradient accumulation and clipping give the cpu's
// results (the cuda fused steps follow the same PyTorch formulas, f32 master for 16-bit params).
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, relErr, randomArray } = require('./helpers');
const { Tensor, AdamW, SGD, Parameter, clipGradNorm } = lk;

function params(dtype, device, n) {
  return [0, 1].map((i) => new Parameter(`lora_${i ? 'B' : 'A'}.default.weight`, i ? 'lora_B' : 'lora_A', 'default',
    Tensor.from(randomArray(n, 300 + i), [n], { dtype, device })));
}

for (const dtype of ['f32', 'bf16']) {
  for (const [name, make] of [
    ['AdamW', (ps) => new AdamW(ps, { lr: 1e-2, weightDecay: 0.1 })],
    ['SGD', (ps) => new SGD(ps, { lr: 0.05, momentum: 0.9, nesterov: true })],
  ]) {
    test(`${name} ${dtype}: cuda parameters follow the cpu (3 steps, accumulation, clipping)`, () => {
      const n = 4099;
      const pc = params(dtype, 'cpu', n);
      const pg = params(dtype, 'cuda', n);
      const oc = make(pc);
      const og = make(pg);
      for (let step = 0; step < 3; step++) {
        for (let i = 0; i < 2; i++) {
          for (const half of [0.5, 0.25]) {
            const g = randomArray(n, 1000 + 10 * step + i, 3);
            pc[i].accumulateGrad(Tensor.from(g, [n]), half);
            pg[i].accumulateGrad(Tensor.from(g, [n], { device: 'cuda' }), half);
          }
        }
        const nc = clipGradNorm(pc, 20);
        const ng = clipGradNorm(pg, 20);
        assert.ok(Math.abs(nc - ng) <= 1e-6 * nc, `norm ${nc} vs ${ng}`);
        oc.step();
        og.step();
        oc.zeroGrad();
        og.zeroGrad();
      }
      for (let i = 0; i < 2; i++) {
        const e = relErr(pg[i].data.toFloat32Array(), pc[i].data.toFloat32Array());
        assert.ok(e <= (dtype === 'f32' ? 1e-6 : 4e-3), `${pc[i].name}: ${e}`);
      }
    });
  }
}
