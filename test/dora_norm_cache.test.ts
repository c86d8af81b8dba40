/**
 * The DoRA weight norm cache (lib/layers/dora_norm_cache.ts): a forward after anything that changes
 * W, A, B or the scale (optimizer step, merge/unmerge, load via copyFrom, setScale, a new tensor)
 * equals the forward of a fresh layer built from the same values, which has no cache.
 */
import { LoraLinear, SGD, Tensor } from '../lib';
import { randomArray } from './helpers/reference';

const IN = 24;
const OUT = 20;
const R = 4;

interface Values {
  W: Float32Array;
  bias: Float32Array;
  A: Float32Array;
  B: Float32Array;
  m: Float32Array;
}

function layerFrom(v: Values, fanInFanOut = false): LoraLinear {
  const layer = new LoraLinear({ weight: Tensor.from(v.W, fanInFanOut ? [IN, OUT] : [OUT, IN]), bias: Tensor.from(v.bias, [OUT]), fanInFanOut });
  layer.addAdapter('d', { r: R, loraAlpha: 8, useDora: true });
  layer.loraA.get('d')!.copyFrom(v.A);
  layer.loraB.get('d')!.copyFrom(v.B);
  layer.loraMagnitude.get('d')!.copyFrom(v.m);
  return layer;
}

function valuesOf(layer: LoraLinear): Values {
  return {
    W: layer.weight.toFloat32Array(),
    bias: layer.bias!.toFloat32Array(),
    A: layer.loraA.get('d')!.toFloat32Array(),
    B: layer.loraB.get('d')!.toFloat32Array(),
    m: layer.loraMagnitude.get('d')!.toFloat32Array(),
  };
}

function randomValues(seed: number): Values {
  return {
    W: randomArray(OUT * IN, seed),
    bias: randomArray(OUT, seed + 1),
    A: randomArray(R * IN, seed + 2),
    B: randomArray(OUT * R, seed + 3),
    m: randomArray(OUT, seed + 4).map((x) => 1 + Math.abs(x)),
  };
}

/** The eval forward of a fresh layer with the same values as `layer` (no cached norm). */
function uncached(layer: LoraLinear, x: Tensor): Float32Array {
  const fresh = layerFrom(valuesOf(layer), layer.fanInFanOut).eval();
  fresh.setScale('d', layer.scaling.get('d')! / fresh.scaling.get('d')!); // setScale multiplies lora_alpha / r
  try {
    return fresh.forward(x).toFloat32Array();
  } finally {
    fresh.dispose();
  }
}

describe.each([false, true])('DoRA norm cache (fanInFanOut %s)', (fifo) => {
  const x = Tensor.from(randomArray(5 * IN, 99), [5, IN]);

  test('repeated eval forwards agree; the cached result equals a fresh layer', () => {
    const layer = layerFrom(randomValues(1), fifo).eval();
    const y1 = layer.forward(x).toFloat32Array();
    const y2 = layer.forward(x).toFloat32Array();
    expect(y2).toEqual(y1);
    expect(y1).toEqual(uncached(layer, x));
  });

  test('an optimizer step on A, B and the magnitude invalidates the norm', () => {
    const layer = layerFrom(randomValues(2), fifo);
    const opt = new SGD(layer.parameters(), { lr: 0.5 });
    layer.train();
    const before = layer.forward(x).toFloat32Array();
    layer.backward(Tensor.from(randomArray(5 * OUT, 7), [5, OUT]));
    opt.step();
    layer.eval();
    const after = layer.forward(x).toFloat32Array();
    expect(after).not.toEqual(before);
    expect(after).toEqual(uncached(layer, x));
    // training forward after the step too (the norm the backward uses is the fresh one)
    layer.train();
    expect(layer.forward(x).toFloat32Array()).toEqual(after);
  });

  test('merge and unmerge change W: forwards after each match fresh layers', () => {
    const layer = layerFrom(randomValues(3), fifo).eval();
    const y0 = layer.forward(x).toFloat32Array();
    const v0 = layer.weight.version;
    layer.merge();
    const v1 = layer.weight.version;
    expect(v1).toBeGreaterThan(v0); // the cached norm of the old W no longer matches
    const merged = layer.forward(x).toFloat32Array(); // the merged weight, no adapter term
    expect(Array.from(merged).every((v, i) => Math.abs(v - y0[i]) < 1e-4)).toBe(true);
    layer.unmerge();
    expect(layer.weight.version).toBeGreaterThan(v1);
    const y1 = layer.forward(x).toFloat32Array();
    expect(y1).toEqual(uncached(layer, x));
  });

  test('loading new values (copyFrom into W, A, B) invalidates the norm', () => {
    const layer = layerFrom(randomValues(4), fifo).eval();
    layer.forward(x).dispose();
    const v = randomValues(40);
    layer.loraA.get('d')!.copyFrom(v.A);
    expect(layer.forward(x).toFloat32Array()).toEqual(uncached(layer, x));
    layer.loraB.get('d')!.copyFrom(v.B);
    expect(layer.forward(x).toFloat32Array()).toEqual(uncached(layer, x));
    layer.weight.copyFrom(v.W);
    expect(layer.forward(x).toFloat32Array()).toEqual(uncached(layer, x));
    layer.loraMagnitude.get('d')!.copyFrom(v.m); // not part of the norm; read on every forward
    expect(layer.forward(x).toFloat32Array()).toEqual(uncached(layer, x));
  });

  test('setScale invalidates the norm', () => {
    const layer = layerFrom(randomValues(5), fifo).eval();
    const y0 = layer.forward(x).toFloat32Array();
    layer.setScale('d', 0.5);
    const y1 = layer.forward(x).toFloat32Array();
    expect(y1).not.toEqual(y0);
    expect(y1).toEqual(uncached(layer, x));
  });
});

describe('Tensor.version', () => {
  test('counts native writes; a wrapped array is never trusted', () => {
    const t = Tensor.zeros([4]);
    const v0 = t.version;
    t.copyFrom(new Float32Array([1, 2, 3, 4]));
    expect(t.version).toBeGreaterThan(v0);
    const v1 = t.version;
    t.toFloat32Array();
    expect(t.version).toBe(v1);
    t.copyFrom(Tensor.zeros([4]));
    expect(t.version).toBeGreaterThan(v1);
    expect(Tensor.wrap(new Float32Array(4), [4]).version).toBe(-1);
  });

  test('a wrapped base weight changed through its array is seen by the next forward', () => {
    const v = randomValues(6);
    const arr = new Float32Array(v.W);
    const layer = new LoraLinear({ weight: Tensor.wrap(arr, [OUT, IN]), bias: Tensor.from(v.bias, [OUT]) });
    layer.addAdapter('d', { r: R, loraAlpha: 8, useDora: true });
    layer.loraA.get('d')!.copyFrom(v.A);
    layer.loraB.get('d')!.copyFrom(v.B);
    layer.eval();
    const x = Tensor.from(randomArray(3 * IN, 5), [3, IN]);
    layer.forward(x).dispose();
    arr.set(randomArray(OUT * IN, 77));
    const y = layer.forward(x).toFloat32Array();
    const fresh = new LoraLinear({ weight: Tensor.from(arr, [OUT, IN]), bias: Tensor.from(v.bias, [OUT]) });
    fresh.addAdapter('d', { r: R, loraAlpha: 8, useDora: true });
    fresh.loraA.get('d')!.copyFrom(v.A);
    fresh.loraB.get('d')!.copyFrom(v.B);
    fresh.loraMagnitude.get('d')!.copyFrom(layer.loraMagnitude.get('d')!);
    expect(y).toEqual(fresh.eval().forward(x).toFloat32Array());
  });
});
