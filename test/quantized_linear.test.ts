/**
 * LoraLinear over a quantized base, every format: forward, backward and merge against a float64
 * reference on the dequantised weight (f32 math, rel err 1e-5); QLoRA steps on an nf4 base; exact
 * merge/unmerge round trips of the bytes over random sequences; DoRA, dropout and mixed batches
 * (run on the dequantised weight, as peft's bnb layers do); async forms, dispose, bad input.
 */
import { AdamW, LoraLinear, QUANT_FORMATS, QuantFormatName, QuantizedTensor, Tensor, mseLoss } from '../lib';
import { relErr } from './helpers/golden';
import { loraLinearRef, matmul, randomArray } from './helpers/reference';

const N = 5;
const IN = 256;
const OUT = 24;
const R = 4;
const TOL = 1e-5;

function makeLayer(format: QuantFormatName, seed: number, opts: { doubleQuant?: boolean; adapters?: number; useDora?: boolean; dropout?: number } = {}) {
  const w = randomArray(OUT * IN, seed, 0.5);
  const q = Tensor.quantize(Tensor.from(w, [OUT, IN]), format, opts.doubleQuant ? { doubleQuant: true } : {});
  const bias = Tensor.from(randomArray(OUT, seed + 1, 0.1), [OUT]);
  const layer = new LoraLinear({ weight: q, bias });
  const names: string[] = [];
  for (let a = 0; a < (opts.adapters ?? 1); a++) {
    const name = `a${a}`;
    layer.addAdapter(name, { r: R, loraAlpha: 8 + 4 * a, initLoraWeights: false, seed: seed * 10 + a, useDora: opts.useDora ?? false, loraDropout: opts.dropout ?? 0 });
    names.push(name);
  }
  return { layer, q, bias, names, wd: q.dequantize().toFloat32Array() };
}

function adapterRefs(layer: LoraLinear<QuantizedTensor>, names: string[]) {
  return names.map((n) => {
    const [A, B] = layer.adapterParameters(n);
    return { A: A.data.toFloat32Array(), B: B.data.toFloat32Array(), r: R, s: layer.scaling.get(n)! };
  });
}

/** dx = dy·W + Σ s·(dy·B)·A, dA = s·(dy·B)ᵀ·x, dB = s·dyᵀ·(x·Aᵀ), float64. */
function backwardRef(x: Float32Array, dy: Float32Array, W: Float32Array, ads: ReturnType<typeof adapterRefs>) {
  const dx = matmul(N, IN, OUT, (i, p) => dy[i * OUT + p], (p, j) => W[p * IN + j]);
  const grads = ads.map((a) => {
    const g = matmul(N, R, OUT, (i, p) => dy[i * OUT + p], (p, j) => a.B[p * R + j]); // dy·B [N, R]
    const d = matmul(N, IN, R, (i, p) => g[i * R + p], (p, j) => a.A[p * IN + j]);
    for (let i = 0; i < dx.length; i++) dx[i] += a.s * d[i];
    const u = matmul(N, R, IN, (i, p) => x[i * IN + p], (p, j) => a.A[j * IN + p]);
    const dA = matmul(R, IN, N, (i, p) => a.s * g[p * R + i], (p, j) => x[p * IN + j]);
    const dB = matmul(OUT, R, N, (i, p) => a.s * dy[p * OUT + i], (p, j) => u[p * R + j]);
    return { dA, dB };
  });
  return { dx, grads };
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a).equals(Buffer.from(b));
}

describe.each(QUANT_FORMATS)('LoraLinear over a %s base', (format) => {
  test('forward and backward match float64 on the dequantised weight; async forms agree', async () => {
    const { layer, bias, names, wd } = makeLayer(format, 3, { adapters: 2 });
    layer.setAdapter(names);
    const x = randomArray(N * IN, 9);
    const X = Tensor.from(x, [N, IN]);
    const y = layer.forward(X);
    const ads = adapterRefs(layer, names);
    expect(relErr(y.toFloat32Array(), loraLinearRef(x, N, IN, OUT, wd, bias.toFloat32Array(), ads))).toBeLessThan(TOL);
    const dy = randomArray(N * OUT, 10);
    const { dx, grads } = layer.backward(Tensor.from(dy, [N, OUT]));
    const ref = backwardRef(x, dy, wd, ads);
    expect(relErr(dx.toFloat32Array(), ref.dx)).toBeLessThan(TOL);
    names.forEach((n, i) => {
      expect(relErr(grads.get(n)!.loraA.toFloat32Array(), ref.grads[i].dA)).toBeLessThan(TOL);
      expect(relErr(grads.get(n)!.loraB.toFloat32Array(), ref.grads[i].dB)).toBeLessThan(TOL);
    });
    const ya = await layer.forwardAsync(X);
    expect(Array.from(ya.toFloat32Array())).toEqual(Array.from(y.toFloat32Array()));
    const ba = await layer.backwardAsync(Tensor.from(dy, [N, OUT]));
    expect(Array.from(ba.dx.toFloat32Array())).toEqual(Array.from(dx.toFloat32Array()));
    layer.eval();
    const ye = layer.forward(X);
    expect(Array.from(ye.toFloat32Array())).toEqual(Array.from(y.toFloat32Array()));
  });

  test('merge: dequantise, add ΔW in f32, re-quantize; exact unmerge gives the original bytes back', async () => {
    const { layer, q, names, wd } = makeLayer(format, 5, { adapters: 2, doubleQuant: format === 'nf4' });
    const b0 = q.bytes();
    // deq(W) + ΔW in f32 against float64 (the delta part, where the rounding would show)
    const sum = layer.mergeAndUnload();
    const [ad] = adapterRefs(layer, [names[0]]);
    const delta64 = matmul(OUT, IN, R, (i, p) => ad.s * ad.B[i * R + p], (p, j) => ad.A[p * IN + j]);
    const got = sum.toFloat32Array().map((v, i) => v - wd[i]);
    expect(relErr(got, delta64)).toBeLessThan(TOL);
    layer.merge();
    expect(layer.mergedAdapters).toEqual(['a0']);
    expect(layer.mergeSideInfoBytes).toBeGreaterThan(0);
    expect(layer.mergeSideInfoBytes).toBeLessThanOrEqual(q.nbytes);
    // the merged bytes are quantize(deq(W) + ΔW), the same bytes as quantizing that sum ourselves
    const requant = Tensor.quantize(sum, format, { doubleQuant: q.doubleQuant });
    expect(bytesEqual(q.bytes(), requant.bytes())).toBe(true);
    layer.unmerge();
    expect(bytesEqual(q.bytes(), b0)).toBe(true);
    expect(layer.mergeSideInfoBytes).toBe(0);
    await layer.mergeAsync({ adapterNames: ['a1', 'a0'] });
    await layer.unmergeAsync();
    expect(bytesEqual(q.bytes(), b0)).toBe(true);
  });

  test('random merge / unmerge / switch sequences restore the bytes exactly', () => {
    const { layer, q, names } = makeLayer(format, 7, { adapters: 3 });
    const b0 = q.bytes();
    let s = 12345;
    const rnd = (n: number) => {
      s = (s * 1103515245 + 12345) % 2147483648;
      return s % n;
    };
    for (let k = 0; k < 12; k++) {
      const op = rnd(3);
      const pick = names.filter(() => rnd(2) === 1);
      if (op === 0) layer.merge({ adapterNames: pick });
      else if (op === 1) {
        layer.unmerge();
        expect(bytesEqual(q.bytes(), b0)).toBe(true);
      } else {
        layer.switchMerged(pick);
        expect(layer.mergedAdapters).toEqual(pick);
      }
    }
    layer.unmerge();
    expect(bytesEqual(q.bytes(), b0)).toBe(true);
    expect(layer.mergeSideInfoBytes).toBe(0);
  });

  test('mergeAndUnload gives a float weight: deq(W) + ΔW in the dtype asked for', () => {
    const { layer, q, wd, names } = makeLayer(format, 8);
    const b0 = q.bytes();
    const delta = layer.getDeltaWeight(names[0]).toFloat32Array();
    for (const dtype of ['f32', 'bf16'] as const) {
      const W = layer.mergeAndUnload({ dtype });
      expect(W.dtype).toBe(dtype);
      const want = wd.map((v, i) => v + delta[i]);
      expect(relErr(W.toFloat32Array(), want)).toBeLessThan(dtype === 'f32' ? 1e-6 : 5e-3);
      W.dispose();
    }
    expect(bytesEqual(q.bytes(), b0)).toBe(true);
  });
});

describe('QLoRA on an nf4 base', () => {
  test('a few AdamW steps reduce the loss and leave the quantized bytes untouched', () => {
    const { layer, q } = makeLayer('nf4', 21, { dropout: 0.1 });
    const b0 = q.bytes();
    const x = Tensor.from(randomArray(16 * IN, 22), [16, IN]);
    const target = Tensor.from(randomArray(16 * OUT, 23), [16, OUT]);
    const opt = new AdamW(layer.parameters(), { lr: 1e-2, weightDecay: 0 });
    const losses: number[] = [];
    for (let step = 0; step < 8; step++) {
      const y = layer.forward(x);
      const { loss, grad } = mseLoss(y, target);
      losses.push(loss);
      opt.zeroGrad();
      layer.backward(grad);
      opt.step();
      y.dispose();
      grad.dispose();
    }
    expect(losses[losses.length - 1]).toBeLessThan(losses[0] * 0.9);
    expect(bytesEqual(q.bytes(), b0)).toBe(true);
  });
});

/** The same layer over the dequantised float weight (what peft's bnb layers run for these paths). */
function floatTwin(q: QuantizedTensor, bias: Tensor, src: LoraLinear<QuantizedTensor>, names: string[]) {
  const twin = new LoraLinear({ weight: q.dequantize(), bias: bias.clone() });
  for (const n of names) {
    twin.addAdapter(n, { r: R, loraAlpha: src.loraAlpha.get(n)!, initLoraWeights: false, useDora: src.useDora.get(n)!, loraDropout: src.loraDropout.get(n)! });
    const [A, B] = src.adapterParameters(n);
    const [tA, tB] = twin.adapterParameters(n);
    tA.data.copyFrom(A.data);
    tB.data.copyFrom(B.data);
    const m = src.magnitudeParameter(n);
    if (m) twin.magnitudeParameter(n)!.data.copyFrom(m.data);
  }
  twin.setAdapter([...src.activeAdapters]);
  return twin;
}

describe('paths run on the dequantised weight', () => {
  test('DoRA: forward, backward and exact merge', () => {
    const { layer, q, bias, names } = makeLayer('nf4', 31, { useDora: true });
    const twin = floatTwin(q, bias, layer, names);
    const x = Tensor.from(randomArray(N * IN, 32), [N, IN]);
    const y = layer.forward(x);
    expect(relErr(y.toFloat32Array(), twin.forward(x).toFloat32Array())).toBeLessThan(TOL);
    const dy = Tensor.from(randomArray(N * OUT, 33), [N, OUT]);
    const g = layer.backward(dy);
    const tg = twin.backward(dy);
    expect(relErr(g.dx.toFloat32Array(), tg.dx.toFloat32Array())).toBeLessThan(TOL);
    expect(relErr(g.grads.get('a0')!.magnitude!.toFloat32Array(), tg.grads.get('a0')!.magnitude!.toFloat32Array())).toBeLessThan(TOL);
    const b0 = q.bytes();
    layer.merge();
    layer.unmerge();
    expect(bytesEqual(q.bytes(), b0)).toBe(true);
  });

  test('dropout (training forward) and mixed-adapter batches', () => {
    const { layer, q, bias, names } = makeLayer('q4_0', 41, { adapters: 2, dropout: 0.25 });
    layer.setAdapter(names);
    const twin = floatTwin(q, bias, layer, names);
    layer.manualSeed(5);
    twin.manualSeed(5);
    const x = Tensor.from(randomArray(4 * IN, 42), [4, IN]);
    expect(relErr(layer.forward(x).toFloat32Array(), twin.forward(x).toFloat32Array())).toBeLessThan(TOL);
    const dy = Tensor.from(randomArray(4 * OUT, 43), [4, OUT]);
    const g = layer.backward(dy);
    const tg = twin.backward(dy);
    expect(relErr(g.dx.toFloat32Array(), tg.dx.toFloat32Array())).toBeLessThan(TOL);
    expect(relErr(g.grads.get('a1')!.loraA.toFloat32Array(), tg.grads.get('a1')!.loraA.toFloat32Array())).toBeLessThan(TOL);
    // 16-bit activations with dropout run on a dequantised copy of W
    const xb = Tensor.from(randomArray(4 * IN, 44), [4, IN], { dtype: 'bf16' });
    layer.manualSeed(6);
    twin.manualSeed(6);
    const yb = layer.forward(xb);
    expect(yb.dtype).toBe('bf16');
    expect(relErr(yb.toFloat32Array(), twin.forward(xb).toFloat32Array())).toBeLessThan(1e-2);
    layer.eval();
    twin.eval();
    const mix = ['a0', '__base__', 'a1', 'a0'];
    expect(relErr(layer.forward(x, { adapterNames: mix }).toFloat32Array(), twin.forward(x, { adapterNames: mix }).toFloat32Array())).toBeLessThan(TOL);
  });
});

describe('quantized base: dispose and bad input', () => {
  test('dispose frees the merge records, not the caller-owned weight', () => {
    const { layer, q } = makeLayer('int8', 51);
    layer.merge();
    expect(layer.mergeSideInfoBytes).toBeGreaterThan(0);
    layer.dispose();
    expect(layer.mergeSideInfoBytes).toBe(0);
    expect(q.disposed).toBe(false);
    q.dispose();
    const l2 = new LoraLinear({ weight: Tensor.quantize(Tensor.zeros([4, 64]), 'nf4') });
    l2.addAdapter('a', { r: 2 });
    l2.weight.dispose();
    expect(() => l2.forward(Tensor.zeros([1, 64]))).toThrow(expect.objectContaining({ name: 'StateError' }));
  });

  test('safeMerge: a non-finite merge leaves the bytes and the bias alone', () => {
    const { layer, q, bias } = makeLayer('nf4', 61);
    layer.loraB.get('a0')!.copyFrom(new Float32Array(OUT * R).fill(Number.POSITIVE_INFINITY));
    const b0 = q.bytes();
    const bias0 = bias.toFloat32Array();
    expect(() => layer.merge({ safeMerge: true })).toThrow(expect.objectContaining({ name: 'LoraRangeError', message: expect.stringMatching(/NaNs or infinities/) }));
    expect(bytesEqual(q.bytes(), b0)).toBe(true);
    expect(Array.from(bias.toFloat32Array())).toEqual(Array.from(bias0));
    expect(layer.merged).toBe(false);
    expect(layer.mergeSideInfoBytes).toBe(0);
  });

  test('typed errors: fanInFanOut, pissa, a disposed QuantizedTensor', () => {
    const q = Tensor.quantize(Tensor.from(randomArray(8 * 64, 1), [8, 64]), 'nf4');
    expect(() => new LoraLinear({ weight: q, fanInFanOut: true })).toThrow(
      expect.objectContaining({ name: 'LoraTypeError', message: expect.stringMatching(/^opts.fanInFanOut: a quantized base is stored \[out, in\]/) }),
    );
    const layer = new LoraLinear({ weight: q });
    expect(() => layer.addAdapter('p', { r: 2, initLoraWeights: 'pissa' })).toThrow(
      expect.objectContaining({ name: 'AdapterError', message: expect.stringMatching(/quantized base keeps frozen/) }),
    );
    expect(() => layer.forward(Tensor.zeros([1, 32]))).toThrow(expect.objectContaining({ name: 'ShapeError', message: expect.stringMatching(/^x: expected shape \[\.\.\., 64\]/) }));
    q.dispose();
    expect(() => new LoraLinear({ weight: q })).toThrow(expect.objectContaining({ name: 'StateError', message: 'opts.weight: the QuantizedTensor was disposed' }));
  });
});
