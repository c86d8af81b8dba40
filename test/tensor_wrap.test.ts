/**
 * Tensor.wrap: a tensor over a typed array's own memory. merge/unmerge change the array in place;
 * the tensor keeps the array alive; a detached or shrunk array gives a typed error on every use,
 * never a crash; async forms refuse ArrayBuffer-backed wraps and take SharedArrayBuffer ones.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import { LoraLinear, Tensor, kernels } from '../lib';

const expectError = (fn: () => unknown, name: string, re: RegExp) => {
  let err: Error | null = null;
  try {
    fn();
  } catch (e) {
    err = e as Error;
  }
  expect(err).not.toBeNull();
  expect(err!.name).toBe(name);
  expect(err!.message).toMatch(re);
};

/** A resizable ArrayBuffer (ES2024; not in this TypeScript lib setting). */
type Resizable = ArrayBuffer & { resize(bytes: number): void };
const resizable = (bytes: number, max: number): Resizable =>
  new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => Resizable)(bytes, { maxByteLength: max });

const seq = (n: number, f = (i: number) => Math.sin(i + 1)) => Float32Array.from({ length: n }, (_, i) => f(i));

describe('zero copy', () => {
  test('merge and unmerge write into the wrapped array itself', () => {
    const w = seq(6 * 4);
    const before = w.slice();
    const W = Tensor.wrap(w, [6, 4]);
    expect(W.wrapped).toBe(true);
    const layer = new LoraLinear({ weight: W }).addAdapter('a', { r: 2, loraAlpha: 4, initLoraWeights: false, seed: 3 });
    const delta = layer.getDeltaWeight('a').toFloat32Array();
    layer.merge({ exact: false });
    for (let i = 0; i < w.length; i++) expect(w[i]).toBeCloseTo(before[i] + delta[i], 6);
    // the same merge on a copied tensor gives the same bits
    const copy = Tensor.from(before, [6, 4]);
    kernels.mergeAdapter(copy, { loraA: layer.loraA.get('a')!, loraB: layer.loraB.get('a')!, scaling: layer.scaling.get('a')! });
    expect(Array.from(copy.toFloat32Array())).toEqual(Array.from(w));
    layer.unmerge();
    for (let i = 0; i < w.length; i++) expect(Math.abs(w[i] - before[i])).toBeLessThan(1e-6);
    // the default (exact) merge gives the caller's array back bit for bit on unmerge
    w.set(before);
    layer.merge();
    expect(Array.from(w)).not.toEqual(Array.from(before));
    layer.unmerge();
    expect(Array.from(w)).toEqual(Array.from(before));
  });

  test('writes by JS are seen by the kernels, writes by lorakit are seen by JS', () => {
    const w = new Float32Array(4);
    const W = Tensor.wrap(w, [2, 2]);
    const layer = new LoraLinear({ weight: W });
    w.set([1, 2, 3, 4]);
    expect(Array.from(layer.forward(Tensor.from([1, 1], [1, 2])).toFloat32Array())).toEqual([3, 7]);
    W.copyFrom(Float32Array.of(5, 6, 7, 8));
    expect(Array.from(w)).toEqual([5, 6, 7, 8]);
    expect(Array.from(W.toFloat32Array())).toEqual([5, 6, 7, 8]);
  });

  test('a view at an offset, f16/bf16 bit patterns and index arrays', () => {
    const buf = new Float32Array(10).fill(7);
    const view = buf.subarray(3, 7);
    Tensor.wrap(view, [2, 2]).copyFrom(Float32Array.of(1, 2, 3, 4));
    expect(Array.from(buf)).toEqual([7, 7, 7, 1, 2, 3, 4, 7, 7, 7]);
    const bits = new Uint16Array([0x3f80, 0x4000]); // bf16 1, 2
    expect(Array.from(Tensor.wrap(bits, [2], { dtype: 'bf16' }).toFloat32Array())).toEqual([1, 2]);
    expect(Array.from(Tensor.wrap(Int32Array.of(4, 5), [2]).toInt32Array())).toEqual([4, 5]);
    expect(Tensor.wrap(BigInt64Array.of(1n), [1]).dtype).toBe('i64');
  });

  test('dispose() lets go of the array, which stays usable in JS', () => {
    const w = seq(4);
    const W = Tensor.wrap(w, [4]);
    W.dispose();
    expect(() => W.toFloat32Array()).toThrow(/used after dispose/);
    w[0] = 42;
    expect(w[0]).toBe(42);
  });
});

describe('bad arguments', () => {
  test('types, dtypes and lengths', () => {
    expectError(() => Tensor.wrap(new Float64Array(4) as never, [4]), 'LoraTypeError', /Tensor.wrap takes a Float32Array.*use Tensor.from, which converts and copies/);
    expectError(() => Tensor.wrap([1, 2] as never, [2]), 'LoraTypeError', /Tensor.wrap takes/);
    expectError(() => Tensor.wrap(new Uint16Array(4), [4]), 'DTypeError', /pass opts.dtype 'f16' or 'bf16'/);
    expectError(() => Tensor.wrap(new Float32Array(4), [4], { dtype: 'bf16' }), 'DTypeError', /a Float32Array holds f32 values, not bf16/);
    expectError(() => Tensor.wrap(new Float32Array(5), [2, 2]), 'ShapeError', /has 5 elements but shape \[2, 2\] needs 4/);
    expectError(() => Tensor.wrap(new Float32Array(4), [4], { device: 'cuda' } as never), 'LoraTypeError', /unknown option 'device'/);
    const buf = new ArrayBuffer(16);
    const view = new Float32Array(buf);
    structuredClone(buf, { transfer: [buf] });
    expectError(() => Tensor.wrap(view, [0]), 'LoraTypeError', /detached/);
  });
});

describe('lifetimes', () => {
  test('a detached array: every use is a StateError, not a crash', () => {
    const buf = new ArrayBuffer(16 * 4);
    const W = Tensor.wrap(new Float32Array(buf), [4, 4]);
    const layer = new LoraLinear({ weight: W }).addAdapter('a', { r: 2, initLoraWeights: false });
    layer.merge();
    const moved = structuredClone(buf, { transfer: [buf] });
    expect(moved.byteLength).toBe(64);
    expectError(() => W.toFloat32Array(), 'StateError', /the typed array this tensor wraps was detached/);
    expectError(() => W.copyFrom(new Float32Array(16)), 'StateError', /was detached/);
    expectError(() => layer.forward(Tensor.zeros([1, 4])), 'StateError', /weight: the typed array this tensor wraps was detached/);
    expectError(() => layer.unmerge(), 'StateError', /was detached/);
  });

  test('a resizable buffer shrunk under the tensor: StateError; grown back: usable again', () => {
    const buf = resizable(16 * 4, 64 * 4);
    const W = Tensor.wrap(new Float32Array(buf), [16]); // a length-tracking view
    buf.resize(8 * 4);
    expectError(() => W.toFloat32Array(), 'StateError', /was resized: it now has 8 elements, the tensor \[16\] needs 16/);
    buf.resize(32 * 4); // a resizable buffer's memory stays in place
    expect(W.toFloat32Array()).toHaveLength(16);
    const fixed = resizable(8 * 4, 16 * 4);
    const F = Tensor.wrap(new Float32Array(fixed, 0, 8), [2, 4]); // a fixed-length view goes out of bounds
    fixed.resize(4 * 4);
    const adapter = { loraA: Tensor.zeros([1, 4]), loraB: Tensor.zeros([2, 1]), scaling: 1 };
    expectError(() => kernels.mergeAdapter(F, adapter), 'StateError', /the typed array this tensor wraps was resized: it now has 0 elements, the tensor \[2, 4\] needs 8/);
  });

  test('the tensor keeps its array alive through garbage collection', () => {
    const dist = path.join(__dirname, '..', 'dist');
    const script = `
      const { Tensor } = require(${JSON.stringify(dist)});
      let t = Tensor.wrap(Float32Array.from({ length: 1 << 20 }, (_, i) => i % 1000), [1 << 20]);
      for (let k = 0; k < 5; k++) { global.gc(); new Float32Array(1 << 22).fill(1); }
      const v = t.toFloat32Array();
      let ok = true;
      for (let i = 0; i < v.length; i++) if (v[i] !== i % 1000) { ok = false; break; }
      t = null; global.gc();
      console.log(ok ? 'intact' : 'changed');`;
    const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('intact');
  });
});

describe('async forms', () => {
  test('refuse an ArrayBuffer-backed wrap (JS could detach it meanwhile)', async () => {
    const layer = new LoraLinear({ weight: Tensor.wrap(seq(16), [4, 4]) }).addAdapter('a', { r: 2, initLoraWeights: false });
    await expect(layer.mergeAsync()).rejects.toMatchObject({ name: 'StateError', message: expect.stringMatching(/wraps a typed array on an ArrayBuffer.*use the sync form, or wrap an array on a SharedArrayBuffer/) });
    layer.merge(); // the sync form works, and the layer is usable after the refusal
    layer.unmerge();
  });

  test('take a SharedArrayBuffer-backed wrap', async () => {
    const w = new Float32Array(new SharedArrayBuffer(16 * 4));
    w.set(seq(16));
    const before = w.slice();
    const layer = new LoraLinear({ weight: Tensor.wrap(w, [4, 4]) }).addAdapter('a', { r: 2, initLoraWeights: false, seed: 9 });
    const delta = layer.getDeltaWeight('a').toFloat32Array();
    await layer.mergeAsync();
    for (let i = 0; i < 16; i++) expect(w[i]).toBeCloseTo(before[i] + delta[i], 6);
    const y = await layer.forwardAsync(Tensor.from(seq(8), [2, 4]));
    expect(y.shape).toEqual([2, 4]);
    await layer.unmergeAsync();
    for (let i = 0; i < 16; i++) expect(Math.abs(w[i] - before[i])).toBeLessThan(1e-6);
  });
});

describe('kernels on wrapped memory', () => {
  // Odd sizes put the last row's end anywhere in the array: a kernel that read past a tensor's end
  // (owned buffers are padded to 64 bytes, wrapped arrays are not) would differ here or under ASan.
  test.each([
    [7, 13, 'f32'], [33, 65, 'f32'], [1, 1, 'f32'], [64, 48, 'f32'], [7, 13, 'bf16'], [33, 65, 'f16'],
  ] as const)('a %i x %i %s weight gives the same bits wrapped as owned', (out, inF, dtype) => {
    const values = seq(out * inF, (i) => Math.sin(i * 0.7) * 0.3);
    const owned = Tensor.from(values, [out, inF], { dtype });
    const data = dtype === 'f32' ? values.slice() : owned.toUint16Array();
    const wrapped = Tensor.wrap(data, [out, inF], { dtype });
    const make = (W: Tensor) => new LoraLinear({ weight: W }).addAdapter('a', { r: 3, loraAlpha: 6, initLoraWeights: false, seed: 4, dtype });
    const [lo, lw] = [make(owned), make(wrapped)];
    for (const n of [1, 5]) {
      const x = Tensor.from(seq(n * inF, (i) => Math.cos(i)), [n, inF], { dtype });
      expect(Array.from(lw.forward(x).toFloat32Array())).toEqual(Array.from(lo.forward(x).toFloat32Array()));
      const dy = Tensor.from(seq(n * out), [n, out], { dtype });
      const [go, gw] = [lo.backward(dy), lw.backward(dy)];
      expect(Array.from(gw.dx.toFloat32Array())).toEqual(Array.from(go.dx.toFloat32Array()));
      expect(Array.from(gw.grads.get('a')!.loraB.toFloat32Array())).toEqual(Array.from(go.grads.get('a')!.loraB.toFloat32Array()));
    }
    lo.merge();
    lw.merge();
    expect(Array.from(wrapped.toFloat32Array())).toEqual(Array.from(owned.toFloat32Array()));
    // the caller's array holds the merged weight itself
    expect(Array.from(data as ArrayLike<number>)).toEqual(Array.from(dtype === 'f32' ? owned.toFloat32Array() : owned.toUint16Array()));
    lo.unmerge();
    lw.unmerge();
    expect(Array.from(wrapped.toFloat32Array())).toEqual(Array.from(owned.toFloat32Array()));
  });
});
