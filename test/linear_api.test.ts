/** LoraLinear: peft's adapter bookkeeping, init, scaling, several adapters, merge rules, errors. */
import { AdapterError, LoraLinear, LoraRangeError, LoraTypeError, ShapeError, StateError, Tensor, DTypeError } from '../lib';
import { loraLinearRef, randomArray } from './helpers/reference';
import { expectClose } from './helpers/golden';

const IN = 12;
const OUT = 10;

function makeLayer(opts: { bias?: boolean; fanInFanOut?: boolean } = {}): { layer: LoraLinear; W: Float32Array; b: Float32Array } {
  const W = randomArray(OUT * IN, 11);
  const b = randomArray(OUT, 12);
  const shape = opts.fanInFanOut ? [IN, OUT] : [OUT, IN];
  const Wt = opts.fanInFanOut ? transpose(W, OUT, IN) : W;
  const layer = new LoraLinear({ weight: Tensor.from(Wt, shape), bias: opts.bias === false ? null : Tensor.from(b, [OUT]), fanInFanOut: opts.fanInFanOut });
  return { layer, W, b };
}

function transpose(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = a[i * cols + j];
  return out;
}

describe('addAdapter', () => {
  test('defaults follow peft: r 8, alpha 8, A kaiming-uniform U(±1/√in), B zero', () => {
    const { layer } = makeLayer();
    layer.addAdapter('default', { seed: 1 });
    expect(layer.r.get('default')).toBe(8);
    expect(layer.loraAlpha.get('default')).toBe(8);
    expect(layer.scaling.get('default')).toBe(1);
    expect(layer.loraDropout.get('default')).toBe(0);
    const A = layer.loraA.get('default')!;
    const B = layer.loraB.get('default')!;
    expect(A.shape).toEqual([8, IN]);
    expect(B.shape).toEqual([OUT, 8]);
    const a = A.toFloat32Array();
    const bound = 1 / Math.sqrt(IN);
    expect(Math.max(...a.map(Math.abs))).toBeLessThanOrEqual(bound);
    expect(Math.max(...a.map(Math.abs))).toBeGreaterThan(bound * 0.8);
    expect(B.toFloat32Array().every((v) => v === 0)).toBe(true);
  });

  test('a fresh adapter is a no-op: output equals the base layer', () => {
    const { layer, W, b } = makeLayer();
    layer.addAdapter('default', { r: 4 });
    const x = randomArray(3 * IN, 5);
    const y = layer.forward(Tensor.from(x, [3, IN])).toFloat32Array();
    expectClose(y, loraLinearRef(x, 3, IN, OUT, W, b, []), 1e-6, 'y');
  });

  test("'gaussian' init draws A from N(0, 1/r)", () => {
    const W = Tensor.zeros([64, 512]);
    const layer = new LoraLinear({ weight: W });
    layer.addAdapter('g', { r: 4, initLoraWeights: 'gaussian', seed: 3 });
    const a = layer.loraA.get('g')!.toFloat32Array();
    const mean = a.reduce((s, v) => s + v, 0) / a.length;
    const std = Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length);
    expect(Math.abs(mean)).toBeLessThan(0.02);
    expect(std).toBeGreaterThan(0.25 * 0.9);
    expect(std).toBeLessThan(0.25 * 1.1);
    expect(layer.loraB.get('g')!.toFloat32Array().every((v) => v === 0)).toBe(true);
  });

  test('initLoraWeights false makes B non-zero; the same seed gives the same weights', () => {
    const { layer } = makeLayer();
    layer.addAdapter('a', { r: 3, initLoraWeights: false, seed: 42 });
    layer.addAdapter('b', { r: 3, initLoraWeights: false, seed: 42 });
    layer.addAdapter('c', { r: 3, initLoraWeights: false, seed: 43 });
    const B = layer.loraB.get('a')!.toFloat32Array();
    expect(B.some((v) => v !== 0)).toBe(true);
    expect(Array.from(layer.loraA.get('b')!.toFloat32Array())).toEqual(Array.from(layer.loraA.get('a')!.toFloat32Array()));
    expect(Array.from(layer.loraB.get('b')!.toFloat32Array())).toEqual(Array.from(B));
    expect(Array.from(layer.loraA.get('c')!.toFloat32Array())).not.toEqual(Array.from(layer.loraA.get('a')!.toFloat32Array()));
  });

  test('scaling is alpha/r, or alpha/√r with useRslora', () => {
    const { layer } = makeLayer();
    layer.addAdapter('plain', { r: 4, loraAlpha: 16 });
    layer.addAdapter('rs', { r: 4, loraAlpha: 16, useRslora: true });
    expect(layer.scaling.get('plain')).toBe(4);
    expect(layer.scaling.get('rs')).toBe(8);
  });

  test('the first adapter becomes active, later ones do not (peft)', () => {
    const { layer } = makeLayer();
    layer.addAdapter('first', { r: 2 });
    layer.addAdapter('second', { r: 2 });
    expect(layer.activeAdapters).toEqual(['first']);
    expect(layer.adapterNames).toEqual(['first', 'second']);
  });

  test('bad options throw typed errors naming the option', () => {
    const { layer } = makeLayer();
    expect(() => layer.addAdapter('x', { r: 0 })).toThrow(LoraRangeError);
    expect(() => layer.addAdapter('x', { r: 0 })).toThrow('opts.r: expected an integer in [1, 1048576], got 0');
    expect(() => layer.addAdapter('x', { r: 2.5 })).toThrow(LoraRangeError);
    expect(() => layer.addAdapter('x', { loraAlpha: NaN })).toThrow('opts.loraAlpha: expected a finite number, got NaN');
    expect(() => layer.addAdapter('x', { loraDropout: 1 })).toThrow(/opts.loraDropout: expected 0 <= p < 1/);
    expect(() => layer.addAdapter('x', { lora_alpha: 3 } as never)).toThrow(/unknown option 'lora_alpha'/);
    expect(() => layer.addAdapter('x', { initLoraWeights: 'pizza' as never })).toThrow(LoraTypeError);
    expect(() => layer.addAdapter('', {})).toThrow(LoraTypeError);
    layer.addAdapter('x', { r: 2 });
    expect(() => layer.addAdapter('x', { r: 2 })).toThrow(AdapterError);
    expect(() => layer.addAdapter('__base__', {})).toThrow(AdapterError);
    expect(layer.adapterNames).toEqual(['x']);
  });
});

describe('several adapters', () => {
  function twoAdapters(): { layer: LoraLinear; W: Float32Array; b: Float32Array } {
    const made = makeLayer();
    made.layer.addAdapter('a', { r: 3, loraAlpha: 6, initLoraWeights: false, seed: 1 });
    made.layer.addAdapter('b', { r: 5, loraAlpha: 2, initLoraWeights: false, seed: 2 });
    return made;
  }
  const ad = (layer: LoraLinear, n: string) => ({
    A: layer.loraA.get(n)!.toFloat32Array(),
    B: layer.loraB.get(n)!.toFloat32Array(),
    r: layer.r.get(n)!,
    s: layer.scaling.get(n)!,
  });

  test('setAdapter([a, b]) sums the active adapters; one pass matches the float64 reference', () => {
    const { layer, W, b } = twoAdapters();
    const x = randomArray(7 * IN, 9);
    layer.setAdapter(['a', 'b']);
    const y = layer.forward(Tensor.from(x, [7, IN])).toFloat32Array();
    expectClose(y, loraLinearRef(x, 7, IN, OUT, W, b, [ad(layer, 'a'), ad(layer, 'b')]), 1e-6, 'y(a+b)');
    layer.setAdapter('b');
    const yb = layer.forward(Tensor.from(x, [7, IN])).toFloat32Array();
    expectClose(yb, loraLinearRef(x, 7, IN, OUT, W, b, [ad(layer, 'b')]), 1e-6, 'y(b)');
  });

  test('enableAdapters(false) gives the base output and unmerges a merged layer', () => {
    const { layer, W, b } = twoAdapters();
    const x = randomArray(2 * IN, 4);
    layer.merge();
    layer.enableAdapters(false);
    expect(layer.disableAdapters).toBe(true);
    const y = layer.forward(Tensor.from(x, [2, IN])).toFloat32Array();
    expect(layer.merged).toBe(false);
    expectClose(y, loraLinearRef(x, 2, IN, OUT, W, b, []), 1e-6, 'base');
    layer.enableAdapters(true);
    expectClose(layer.forward(Tensor.from(x, [2, IN])).toFloat32Array(), loraLinearRef(x, 2, IN, OUT, W, b, [ad(layer, 'a')]), 1e-6, 'a');
  });

  test('deleteAdapter frees it and picks a remaining active adapter; merged adapters cannot be deleted', () => {
    const { layer } = twoAdapters();
    const A = layer.loraA.get('a')!;
    layer.merge();
    expect(() => layer.deleteAdapter('a')).toThrow(/is merged; call unmerge\(\) before deleting it/);
    layer.unmerge();
    layer.deleteAdapter('a');
    expect(A.disposed).toBe(true);
    expect(layer.adapterNames).toEqual(['b']);
    expect(layer.activeAdapters).toEqual(['b']);
    expect(layer.r.has('a')).toBe(false);
    expect(() => layer.deleteAdapter('a')).toThrow(AdapterError);
  });

  test('unknown adapter names are rejected everywhere', () => {
    const { layer } = twoAdapters();
    expect(() => layer.setAdapter('zzz')).toThrow("names[0]: unknown adapter 'zzz' (this layer has: a, b)");
    expect(() => layer.setAdapter(['a', 'a'])).toThrow(AdapterError);
    expect(() => layer.merge({ adapterNames: ['zzz'] })).toThrow(AdapterError);
    expect(() => layer.getDeltaWeight('zzz')).toThrow(AdapterError);
    expect(() => layer.setAdapter(3 as never)).toThrow(LoraTypeError);
  });
});

describe('merge and unmerge', () => {
  test('merge is idempotent and only merges what is asked; unmerge is LIFO', () => {
    const { layer, W } = makeLayer();
    layer.addAdapter('a', { r: 2, initLoraWeights: false, seed: 5 });
    layer.addAdapter('b', { r: 2, initLoraWeights: false, seed: 6 });
    layer.merge({ adapterNames: ['b'] });
    layer.merge({ adapterNames: ['b', 'a'] });
    layer.merge();
    expect(layer.mergedAdapters).toEqual(['b', 'a']);
    const dA = layer.getDeltaWeight('a').toFloat32Array();
    const dB = layer.getDeltaWeight('b').toFloat32Array();
    expectClose(layer.weight.toFloat32Array(), W.map((v, i) => v + dA[i] + dB[i]), 1e-6, 'W + ΔA + ΔB');
    layer.unmerge();
    expect(layer.merged).toBe(false);
    expectClose(layer.weight.toFloat32Array(), W, 1e-6, 'W restored');
  });

  test('a merged layer forwards with the merged weight alone (peft), equal to the unmerged output', () => {
    const { layer } = makeLayer({ fanInFanOut: true });
    layer.addAdapter('a', { r: 3, initLoraWeights: false, seed: 7 });
    layer.eval();
    const x = Tensor.from(randomArray(4 * IN, 8), [2, 2, IN]);
    const y0 = layer.forward(x);
    expect(y0.shape).toEqual([2, 2, OUT]);
    layer.merge();
    expectClose(layer.forward(x).toFloat32Array(), y0.toFloat32Array(), 1e-6, 'merged forward');
  });

  test('safeMerge leaves W untouched when the result is not finite', () => {
    const { layer, W } = makeLayer();
    layer.addAdapter('bad', { r: 2, initLoraWeights: false, seed: 1 });
    const A = layer.loraA.get('bad')!;
    const a = A.toFloat32Array();
    a[0] = Infinity;
    A.copyFrom(a);
    expect(() => layer.merge({ safeMerge: true })).toThrow(/NaNs or infinities detected .* 'bad'/);
    expect(layer.merged).toBe(false);
    expect(Array.from(layer.weight.toFloat32Array())).toEqual(Array.from(W));
  });

  test('safeMerge of a finite adapter equals the plain merge', () => {
    const made1 = makeLayer();
    const made2 = makeLayer();
    for (const m of [made1, made2]) m.layer.addAdapter('a', { r: 2, initLoraWeights: false, seed: 9 });
    made1.layer.merge({ safeMerge: true });
    made2.layer.merge();
    expect(Array.from(made1.layer.weight.toFloat32Array())).toEqual(Array.from(made2.layer.weight.toFloat32Array()));
  });

  test('bf16 weights merge with one rounding and unmerge within bf16 rounding', () => {
    const Wf = randomArray(OUT * IN, 3);
    const W = Tensor.from(Wf, [OUT, IN], { dtype: 'bf16' });
    const W0 = W.toFloat32Array();
    const layer = new LoraLinear({ weight: W });
    layer.addAdapter('a', { r: 2, initLoraWeights: false, seed: 2 });
    const d = layer.getDeltaWeight('a').toFloat32Array();
    layer.merge();
    const merged = layer.weight.toFloat32Array();
    const exact = Tensor.from(W0.map((v, i) => v + d[i]), [OUT, IN], { dtype: 'bf16' }).toFloat32Array();
    expect(Array.from(merged)).toEqual(Array.from(exact));
    layer.unmerge();
    const back = layer.weight.toFloat32Array();
    // Two roundings (merge, then unmerge), each within half a bf16 ulp of its value: bf16
    // merge→unmerge is not exactly reversible (peft's golden case shows the same drift).
    for (let i = 0; i < back.length; i++)
      expect(Math.abs(back[i] - W0[i])).toBeLessThanOrEqual((Math.abs(merged[i]) + Math.abs(W0[i])) * 2 ** -8);
  });
});

describe('training state and backward', () => {
  test('eval forward keeps nothing: backward then throws', () => {
    const { layer } = makeLayer();
    layer.addAdapter('a', { r: 2 });
    layer.eval();
    expect(layer.training).toBe(false);
    layer.forward(Tensor.from(randomArray(IN, 1), [1, IN]));
    expect(() => layer.backward(Tensor.zeros([1, OUT]))).toThrow(StateError);
    expect(() => layer.backward(Tensor.zeros([1, OUT]))).toThrow(/needs a forward\(\) in training mode first/);
  });

  test('frozen (inferenceMode) and inactive adapters get no gradients; W and b never change', () => {
    const { layer, W, b } = makeLayer();
    layer.addAdapter('live', { r: 2, initLoraWeights: false, seed: 1 });
    layer.addAdapter('frozen', { r: 2, initLoraWeights: false, seed: 2, inferenceMode: true });
    layer.addAdapter('idle', { r: 2, initLoraWeights: false, seed: 3 });
    layer.setAdapter(['live', 'frozen']);
    expect(layer.isFrozen('frozen')).toBe(true);
    layer.forward(Tensor.from(randomArray(3 * IN, 1), [3, IN]));
    const { grads } = layer.backward(Tensor.from(randomArray(3 * OUT, 2), [3, OUT]));
    expect([...grads.keys()]).toEqual(['live']);
    expect(Array.from(layer.weight.toFloat32Array())).toEqual(Array.from(W));
    expect(Array.from(layer.bias!.toFloat32Array())).toEqual(Array.from(b));
  });

  test('backward checks dy against the forward output shape', () => {
    const { layer } = makeLayer();
    layer.addAdapter('a', { r: 2 });
    layer.forward(Tensor.from(randomArray(3 * IN, 1), [3, IN]));
    expect(() => layer.backward(Tensor.zeros([3, OUT + 1]))).toThrow(ShapeError);
    expect(() => layer.backward(Tensor.zeros([3, OUT + 1]))).toThrow(`dy: expected shape [3, ${OUT}] (the forward output), got [3, ${OUT + 1}]`);
  });
});

describe('input errors', () => {
  test('constructor checks weight and bias', () => {
    expect(() => new LoraLinear({ weight: Tensor.zeros([2, 3, 4]) })).toThrow('opts.weight: expected 2 dimensions, got shape [2, 3, 4]');
    expect(() => new LoraLinear({ weight: Tensor.zeros([4, 3]), bias: Tensor.zeros([3]) })).toThrow('opts.bias: expected shape [4], got [3]');
    expect(() => new LoraLinear({ weight: new Float32Array(4) as never })).toThrow(/opts.weight: expected a Tensor, got a Float32Array/);
    expect(() => new LoraLinear({ weight: Tensor.from(new Int32Array(4), [2, 2]) })).toThrow(DTypeError);
    expect(() => new LoraLinear({} as never)).toThrow('opts.weight: required');
  });

  test('forward checks x', () => {
    const { layer } = makeLayer();
    layer.addAdapter('a', { r: 2 });
    expect(() => layer.forward(Tensor.zeros([3, IN + 1]))).toThrow(`x: expected shape [..., ${IN}] (in_features), got [3, ${IN + 1}]`);
    expect(() => layer.forward(new Float32Array(IN) as never)).toThrow(LoraTypeError);
    const x = Tensor.zeros([1, IN]);
    x.dispose();
    expect(() => layer.forward(x)).toThrow(StateError);
  });

  test('a disposed base weight is reported, not used', () => {
    const W = Tensor.zeros([OUT, IN]);
    const layer = new LoraLinear({ weight: W });
    W.dispose();
    expect(() => layer.forward(Tensor.zeros([1, IN]))).toThrow('weight: the base weight tensor was disposed');
  });
});
