/** LoraLinear.forward(x, { out }): y written into the caller's tensor, same values as a fresh y, checked like x. */
import { AdapterError, DTypeError, LoraLinear, LoraRangeError, LoraTypeError, ShapeError, StateError, Tensor } from '../lib';
import { randomArray } from './helpers/reference';

const IN = 12;
const OUT = 10;

function layerWith(opts: { bias?: boolean; fanInFanOut?: boolean; dora?: boolean } = {}): LoraLinear {
  const shape = opts.fanInFanOut ? [IN, OUT] : [OUT, IN];
  const layer = new LoraLinear({
    weight: Tensor.from(randomArray(OUT * IN, 1), shape),
    bias: opts.bias ? Tensor.from(randomArray(OUT, 2), [OUT]) : null,
    fanInFanOut: opts.fanInFanOut,
  });
  layer.addAdapter('a', { r: 4, loraAlpha: 8, initLoraWeights: false, seed: 3, useDora: opts.dora });
  return layer;
}

const bits = (t: Tensor): number[] => Array.from(t.toFloat32Array());

describe('forward with opts.out', () => {
  test.each([
    ['plain', {}],
    ['bias', { bias: true }],
    ['fanInFanOut', { fanInFanOut: true }],
    ['DoRA', { dora: true }],
  ])('%s: writes and returns out, equal to a fresh output', (_name, o) => {
    const layer = layerWith(o).eval();
    const x = Tensor.from(randomArray(3 * IN, 4), [3, IN]);
    const out = Tensor.zeros([3, OUT]);
    const ref = layer.forward(x);
    expect(layer.forward(x, { out })).toBe(out);
    expect(bits(out)).toEqual(bits(ref));
    // Repeated calls into the same out give the same values (nothing accumulates).
    layer.forward(x, { out });
    expect(bits(out)).toEqual(bits(ref));
  });

  test('two active adapters and a 3-d x', () => {
    const layer = layerWith({ bias: true });
    layer.addAdapter('b', { r: 2, initLoraWeights: false, seed: 5 });
    layer.setAdapter(['a', 'b']);
    layer.eval();
    const x = Tensor.from(randomArray(2 * 3 * IN, 6), [2, 3, IN]);
    const out = Tensor.empty([2, 3, OUT]);
    expect(bits(layer.forward(x, { out }))).toEqual(bits(layer.forward(x)));
  });

  test('training mode: backward after a forward into out matches the fresh-output run', () => {
    const x = Tensor.from(randomArray(2 * IN, 7), [2, IN]);
    const dy = Tensor.from(randomArray(2 * OUT, 8), [2, OUT]);
    const l1 = layerWith().train();
    const l2 = layerWith().train();
    const y1 = l1.forward(x);
    const out = Tensor.zeros([2, OUT]);
    l2.forward(x, { out });
    expect(bits(out)).toEqual(bits(y1));
    const g1 = l1.backward(dy);
    const g2 = l2.backward(dy);
    expect(bits(g2.dx)).toEqual(bits(g1.dx));
    expect(bits(g2.grads.get('a')!.loraA)).toEqual(bits(g1.grads.get('a')!.loraA));
  });

  test('forwardAsync takes out too', async () => {
    const layer = layerWith({ bias: true }).eval();
    const x = Tensor.from(randomArray(IN, 9), [1, IN]);
    const out = Tensor.empty([1, OUT]);
    expect(await layer.forwardAsync(x, { out })).toBe(out);
    expect(bits(out)).toEqual(bits(layer.forward(x)));
  });

  test('a bad out gets a typed error naming opts.out, and the layer still works', () => {
    const layer = layerWith().eval();
    const x = Tensor.from(randomArray(2 * IN, 10), [2, IN]);
    expect(() => layer.forward(x, { out: Tensor.zeros([2, OUT], { dtype: 'bf16' }) })).toThrow(DTypeError);
    expect(() => layer.forward(x, { out: Tensor.zeros([2, OUT], { dtype: 'bf16' }) })).toThrow(/opts\.out: expected f32/);
    expect(() => layer.forward(x, { out: Tensor.zeros([3, OUT]) })).toThrow(ShapeError);
    expect(() => layer.forward(x, { out: Tensor.zeros([3, OUT]) })).toThrow(/opts\.out: expected shape \[2, 10\]/);
    expect(() => layer.forward(x, { out: Tensor.zeros([2, OUT], { dtype: 'i32' }) })).toThrow(/opts\.out/);
    expect(() => layer.forward(x, { out: new Float32Array(2 * OUT) as unknown as Tensor })).toThrow(LoraTypeError);
    const gone = Tensor.zeros([2, OUT]);
    gone.dispose();
    expect(() => layer.forward(x, { out: gone })).toThrow(StateError);
    const sq = new LoraLinear({ weight: Tensor.from(randomArray(IN * IN, 11), [IN, IN]) }).eval();
    const xs = Tensor.from(randomArray(2 * IN, 12), [2, IN]);
    expect(() => sq.forward(xs, { out: xs })).toThrow(LoraRangeError);
    expect(() => layer.forward(x, { out: Tensor.zeros([2, OUT]), adapterNames: ['a', 'a'] })).toThrow(/opts\.out: not supported with opts\.adapterNames/);
    expect(() => layer.forward(x, { outt: 1 } as never)).toThrow(/unknown option 'outt'/);
    expect(layer.forward(x).shape).toEqual([2, OUT]);
  });

  test('a forward that fails after the checks leaves out alive (it belongs to the caller)', () => {
    const layer = layerWith({ dora: true });
    layer.addAdapter('b', { r: 2, seed: 1 });
    layer.setAdapter(['a', 'b']);
    layer.eval();
    const x = Tensor.from(randomArray(IN, 13), [1, IN]);
    const out = Tensor.zeros([1, OUT]);
    expect(() => layer.forward(x, { out })).toThrow(AdapterError);
    expect(out.disposed).toBe(false);
    expect(bits(out).every((v) => v === 0)).toBe(true);
  });
});
