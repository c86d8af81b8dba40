import { Tensor, crossEntropyLoss, mseLoss } from '../lib';
import { randomArray } from './helpers/reference';

/** Central differences over a few coordinates, dividing by the actual f32 step taken. */
function checkGradFD(x: Float32Array, shape: number[], loss: (t: Tensor) => number, grad: Float32Array, idx: number[]): void {
  for (const i of idx) {
    const plus = x.slice();
    const minus = x.slice();
    plus[i] += 1e-2;
    minus[i] -= 1e-2;
    const fd = (loss(Tensor.from(plus, shape)) - loss(Tensor.from(minus, shape))) / (plus[i] - minus[i]);
    expect(Math.abs(fd - grad[i])).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(grad[i])) + 1e-7);
  }
}

describe('mseLoss', () => {
  test('value and gradient (finite differences), mean and sum', () => {
    const shape = [6, 7];
    const p = randomArray(42, 1);
    const t = randomArray(42, 2);
    const target = Tensor.from(t, shape);
    const { loss, grad } = mseLoss(Tensor.from(p, shape), target);
    let ref = 0;
    for (let i = 0; i < 42; i++) ref += (p[i] - t[i]) ** 2;
    expect(loss).toBeCloseTo(ref / 42, 12);
    expect(grad.shape).toEqual(shape);
    checkGradFD(p, shape, (x) => mseLoss(x, target).loss, grad.toFloat32Array(), [0, 5, 17, 41]);
    const sum = mseLoss(Tensor.from(p, shape), t, { reduction: 'sum' });
    expect(sum.loss).toBeCloseTo(ref, 10);
    checkGradFD(p, shape, (x) => mseLoss(x, t, { reduction: 'sum' }).loss, sum.grad.toFloat32Array(), [3, 40]);
  });

  test('shape mismatch and bad reduction are typed errors', () => {
    const p = Tensor.zeros([2, 3]);
    expect(() => mseLoss(p, Tensor.zeros([3, 2]))).toThrow(expect.objectContaining({ name: 'ShapeError' }));
    expect(() => mseLoss(p, new Float32Array(5))).toThrow(/target: has 5 elements/);
    expect(() => mseLoss(p, p, { reduction: 'max' as never })).toThrow(/opts.reduction/);
  });
});

describe('crossEntropyLoss', () => {
  test('matches log-softmax by hand and finite differences (with smoothing and ignore_index)', () => {
    const shape = [5, 4];
    const x = randomArray(20, 3, 3);
    const targets = [1, 3, -100, 0, 2];
    const { loss, grad } = crossEntropyLoss(Tensor.from(x, shape), targets);
    let ref = 0;
    for (let r = 0; r < 5; r++) {
      if (targets[r] === -100) continue;
      const row = Array.from(x.slice(r * 4, r * 4 + 4));
      const lse = Math.log(row.reduce((s, v) => s + Math.exp(v), 0));
      ref += lse - row[targets[r]];
    }
    expect(loss).toBeCloseTo(ref / 4, 10);
    const g = grad.toFloat32Array();
    expect(Array.from(g.slice(8, 12))).toEqual([0, 0, 0, 0]); // ignored row
    checkGradFD(x, shape, (t) => crossEntropyLoss(t, targets).loss, g, [0, 1, 6, 7, 12, 19]);
    const sm = crossEntropyLoss(Tensor.from(x, shape), Int32Array.from(targets), { labelSmoothing: 0.1 });
    checkGradFD(x, shape, (t) => crossEntropyLoss(t, targets, { labelSmoothing: 0.1 }).loss, sm.grad.toFloat32Array(), [0, 5, 13, 18]);
    // rows of the gradient sum to 0 (softmax minus a distribution)
    for (let r = 0; r < 5; r++) expect(Math.abs(g.slice(r * 4, r * 4 + 4).reduce((a, b) => a + b, 0))).toBeLessThan(1e-7);
  });

  test('is numerically stable for huge logits', () => {
    const { loss, grad } = crossEntropyLoss(Tensor.from([1000, 0, -1000, 3e38, 3e38, 0], [2, 3]), Tensor.from(Int32Array.from([0, 1]), [2], { dtype: 'i32' }));
    expect(Number.isFinite(loss)).toBe(true);
    expect(loss).toBeCloseTo(Math.log(2) / 2, 10);
    expect(Array.from(grad.toFloat32Array()).every(Number.isFinite)).toBe(true);
  });

  test('bad targets are typed errors naming the argument', () => {
    const l = Tensor.zeros([2, 3]);
    expect(() => crossEntropyLoss(l, [0, 3])).toThrow(/targets\[1\]: expected a class index in \[0, 2\]/);
    expect(() => crossEntropyLoss(l, [0])).toThrow(expect.objectContaining({ name: 'ShapeError' }));
    expect(() => crossEntropyLoss(l, Tensor.zeros([2]))).toThrow(expect.objectContaining({ name: 'DTypeError' }));
    expect(() => crossEntropyLoss(l, [0, 1], { labelSmoothing: 2 })).toThrow(/opts.labelSmoothing/);
  });
});
