// The small-batch (decode) forward on cuda, n ≤ 16 rows: against the cpu backend in f32/bf16/f16,
// on shapes that split K over blocks (few output features, long rows) and shapes that do not,
// with one and two adapters and a bias; repeated calls must be bitwise identical (the split-K
// partial sums are added in a fixed order whatever the blocks' timing).
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { lk, relErr, randomArray } = require('./helpers');
const { LoraLinear, Tensor } = lk;

const TOL = { f32: 1e-5, f16: 5e-3, bf16: 1e-2 };

// [n, in, out, r]
const SHAPES = [
  [1, 4096, 64, 8], // 2 feature groups, 8 K splits
  [3, 2056, 200, 16], // K not a multiple of the 512 chunk
  [16, 4096, 4100, 64], // many groups: fewer splits
  [9, 1000, 96, 5], // in % 8 != 0: scalar loads, no split
  [16, 520, 33, 3],
];

let seed = 5000;
for (const dtype of ['f32', 'bf16', 'f16']) {
  for (const [n, inF, outF, r] of SHAPES) {
    test(`decode ${dtype} n=${n} in=${inF} out=${outF} r=${r}: matches the cpu, repeatable`, () => {
      const mk = (shape, scale) => {
        const data = randomArray(shape.reduce((a, b) => a * b, 1), seed++, scale);
        return [Tensor.from(data, shape, { dtype }), Tensor.from(data, shape, { dtype, device: 'cuda' })];
      };
      const [Wc, Wg] = mk([outF, inF], 0.1);
      const [bc, bg] = mk([outF], 0.5);
      const [xc, xg] = mk([n, inF], 1);
      const build = (W, b) => {
        const l = new LoraLinear({ weight: W, bias: b })
          .addAdapter('a', { r, loraAlpha: 2 * r, dtype, initLoraWeights: false, seed: 3 })
          .addAdapter('b', { r: r + 1, loraAlpha: 4, dtype, initLoraWeights: false, seed: 4 });
        l.setAdapter(['a', 'b']);
        return l.eval();
      };
      const lc = build(Wc, bc);
      const lg = build(Wg, bg);
      const yc = lc.forward(xc).toFloat32Array();
      const y1 = lg.forward(xg).toFloat32Array();
      const e = relErr(y1, yc);
      assert.ok(e <= TOL[dtype], `y: relative error ${e}`);
      for (let rep = 0; rep < 3; rep++) {
        const y2 = lg.forward(xg).toFloat32Array();
        assert.ok(y2.every((v, i) => Object.is(v, y1[i])), `call ${rep + 2} differs from the first`);
      }
      lg.dispose();
      lc.dispose();
    });
  }
}
