/**
 * Exact merge (lib/layers/exact_merge.ts, native/core/exact_format.h): random merge / unmerge /
 * switch sequences over random Linear (fan_in_fan_out too), Embedding, Conv2d and DoRA layers leave
 * W bit-identical in f32, f16 and bf16; a switch equals a fresh merge bitwise; exact: false is
 * peft's merge as before; the side information is freed on unmerge and dispose, and stays within 2
 * bits per weight for 16-bit weights with realistic deltas.
 */
import { FloatDType, LoraConv2d, LoraEmbedding, LoraLayer, LoraLinear, LoraModel, Tensor } from '../lib';
import { mergeAdapter, unmergeAdapter } from '../lib/kernels';
import { randomArray } from './helpers/reference';

const DTYPES: FloatDType[] = ['f32', 'f16', 'bf16'];
const SEQUENCES = 1000; // per dtype

/** A small deterministic generator for the sequences. */
class Gen {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0 || 1;
  }
  next(): number {
    let s = this.#s;
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    this.#s = s >>> 0;
    return this.#s / 4294967296;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(a: readonly T[]): T {
    return a[Math.floor(this.next() * a.length)];
  }
  /** A random ordered subset. */
  subset(a: readonly string[]): string[] {
    const out = a.filter(() => this.next() < 0.5);
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [out[i], out[j]] = [out[j], out[i]];
    }
    return out;
  }
}

function bits(t: Tensor): Uint32Array | Uint16Array {
  return t.dtype === 'f32' ? new Uint32Array(t.toFloat32Array().buffer) : t.toUint16Array();
}

function sameBits(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

type Kind = 'linear' | 'fifo' | 'dora' | 'embedding' | 'conv2d';

/** A random layer of `kind` with 1–3 adapters (random ranks, scales and non-zero B). */
function makeLayer(g: Gen, kind: Kind, dtype: FloatDType, seed: number): { layer: LoraLayer; names: string[] } {
  const rows = g.int(1, 24);
  const cols = g.int(1, 40);
  const wScale = g.pick([0.02, 0.5, 3]);
  let layer: LoraLayer;
  if (kind === 'conv2d') {
    const k = g.pick([1, 3]);
    const cin = g.int(1, 5);
    layer = new LoraConv2d({ weight: Tensor.from(randomArray(rows * cin * k * k, seed, wScale), [rows, cin, k, k], { dtype }), padding: 1 });
  } else if (kind === 'embedding') {
    layer = new LoraEmbedding({ weight: Tensor.from(randomArray(rows * cols, seed, wScale), [rows, cols], { dtype }) });
  } else {
    layer = new LoraLinear({ weight: Tensor.from(randomArray(rows * cols, seed, wScale), [rows, cols], { dtype }), fanInFanOut: kind === 'fifo' });
  }
  const names: string[] = [];
  const n = g.int(1, 3);
  for (let a = 0; a < n; a++) {
    const name = `a${a}`;
    layer.addAdapter(name, {
      r: g.int(1, 6),
      loraAlpha: g.pick([1, 8, 16, 64]),
      initLoraWeights: false,
      seed: seed * 7 + a,
      useDora: kind === 'dora' && g.next() < 0.7,
      dtype: g.pick(['f32', dtype]),
    });
    names.push(name);
  }
  return { layer, names };
}

describe.each(DTYPES)('exact merge, %s', (dtype) => {
  test(`${SEQUENCES} random merge / unmerge / switch sequences restore W bit for bit; switches equal fresh merges`, () => {
    const kinds: Kind[] = ['linear', 'fifo', 'dora', 'embedding', 'conv2d'];
    const g = new Gen(dtype === 'f32' ? 11 : dtype === 'f16' ? 12 : 13);
    let switches = 0;
    let changed = 0;
    for (let sq = 0; sq < SEQUENCES; sq++) {
      const kind = kinds[sq % kinds.length];
      const { layer, names } = makeLayer(g, kind, dtype, sq + 1);
      const W = layer.weight as Tensor; // float bases only here
      const w0 = bits(W);
      const ops = g.int(1, 5);
      for (let o = 0; o < ops; o++) {
        const op = g.int(0, 2);
        if (op === 0) {
          layer.merge({ adapterNames: g.subset(names) });
        } else if (op === 1) {
          layer.unmerge();
          expect(layer.mergeSideInfoBytes).toBe(0);
          if (!sameBits(bits(W), w0)) throw new Error(`sequence ${sq} (${kind}): unmerge did not restore W`);
        } else {
          const target = g.subset(names);
          layer.switchMerged(target);
          expect(layer.mergedAdapters).toEqual(target);
          const switched = bits(W);
          const bytes = layer.mergeSideInfoBytes;
          layer.unmerge();
          if (!sameBits(bits(W), w0)) throw new Error(`sequence ${sq} (${kind}): unmerge after a switch did not restore W`);
          layer.merge({ adapterNames: target });
          if (!sameBits(bits(W), switched)) throw new Error(`sequence ${sq} (${kind}): switch to [${target}] differs from a fresh merge`);
          expect(layer.mergeSideInfoBytes).toBe(bytes);
          switches++;
        }
        if (layer.merged && !sameBits(bits(W), w0)) changed++;
      }
      layer.unmerge();
      if (!sameBits(bits(W), w0)) throw new Error(`sequence ${sq} (${kind}): the final unmerge did not restore W`);
      expect(layer.mergeSideInfoBytes).toBe(0);
      layer.dispose();
      W.dispose();
    }
    expect(switches).toBeGreaterThan(SEQUENCES / 2);
    expect(changed).toBeGreaterThan(SEQUENCES / 4); // the merges did change W
  });

  test('wide layers: rows of several 256-column segments, position lists and bitmaps, over 64 corrections a segment', () => {
    // The random sequences use narrow layers; these shapes reach the kernels' full 8 × 32 blocks and
    // tails and the codec's wide segments (small weights, large deltas: most weights corrected).
    for (const [rows, cols, fifo, dora, wScale] of [
      [21, 600, false, false, 0.02],
      [40, 520, true, false, 0.5],
      [17, 300, false, true, 0.02],
      [9, 1100, true, true, 0.3],
    ] as const) {
      const W = Tensor.from(randomArray(rows * cols, rows + cols, wScale), [rows, cols], { dtype });
      const layer = new LoraLinear({ weight: W, fanInFanOut: fifo });
      layer.addAdapter('a', { r: 8, loraAlpha: 64, initLoraWeights: false, seed: 5, useDora: dora });
      layer.addAdapter('b', { r: 3, loraAlpha: 4, initLoraWeights: false, seed: 6 });
      const w0 = bits(W);
      layer.merge({ adapterNames: ['a', 'b'] });
      const merged = bits(W);
      layer.switchMerged(['b']);
      layer.switchMerged(['a', 'b']);
      expect(sameBits(bits(W), merged)).toBe(true);
      layer.unmerge();
      expect(sameBits(bits(W), w0)).toBe(true);
      layer.dispose();
      W.dispose();
    }
  });

  test('merge({ exact: false }) is the peft merge as before: mergeDelta bits, no side information', () => {
    const W = Tensor.from(randomArray(64 * 48, 5, 0.05), [64, 48], { dtype });
    const layer = new LoraLinear({ weight: W });
    layer.addAdapter('a', { r: 4, initLoraWeights: false, seed: 3 });
    const w0 = bits(W);
    const ref = W.clone();
    const adapter = { loraA: layer.loraA.get('a')!, loraB: layer.loraB.get('a')!, scaling: layer.scaling.get('a')! };
    mergeAdapter(ref, adapter);
    layer.merge({ exact: false });
    expect(layer.mergeSideInfoBytes).toBe(0);
    expect(sameBits(bits(W), bits(ref))).toBe(true);
    unmergeAdapter(ref, adapter);
    layer.unmerge();
    expect(layer.merged).toBe(false);
    expect(sameBits(bits(W), bits(ref))).toBe(true);
    // peft's unmerge does not promise the bits back: a 16-bit weight drifts
    if (dtype !== 'f32') expect(sameBits(bits(W), w0)).toBe(false);
    layer.dispose();
    ref.dispose();
  });

  test('mixed exact and peft merges unmerge in reverse order; exact ones from their records', () => {
    const W = Tensor.from(randomArray(40 * 30, 8, 0.05), [40, 30], { dtype });
    const layer = new LoraLinear({ weight: W });
    for (const n of ['a', 'b', 'c']) layer.addAdapter(n, { r: 3, initLoraWeights: false, seed: n.charCodeAt(0) });
    const w0 = bits(W);
    layer.merge({ adapterNames: ['a'] });
    const wa = bits(W);
    layer.merge({ adapterNames: ['b'], exact: false });
    layer.merge({ adapterNames: ['c'] });
    expect(layer.mergedAdapters).toEqual(['a', 'b', 'c']);
    layer.unmerge();
    expect(layer.merged).toBe(false);
    expect(layer.mergeSideInfoBytes).toBe(0);
    // b's inexact undo may leave W a rounding away from wa, so a's exact undo holds only for wa
    if (sameBits(wa, bits(W))) expect(sameBits(w0, bits(W))).toBe(true);
    layer.dispose();
  });
});

describe('exact merge: side information', () => {
  test('freed on unmerge and on dispose; switch with a peft merge falls back to unmerge + merge', () => {
    const W = Tensor.from(randomArray(32 * 32, 1, 0.05), [32, 32], { dtype: 'bf16' });
    const layer = new LoraLinear({ weight: W });
    layer.addAdapter('a', { r: 4, initLoraWeights: false }).addAdapter('b', { r: 2, initLoraWeights: false, useDora: true });
    layer.merge({ adapterNames: ['a', 'b'] });
    expect(layer.mergeSideInfoBytes).toBeGreaterThan(0);
    layer.unmerge();
    expect(layer.mergeSideInfoBytes).toBe(0);
    layer.merge({ adapterNames: ['b'], exact: false });
    layer.switchMerged(['a']);
    expect(layer.mergedAdapters).toEqual(['a']);
    expect(layer.mergeSideInfoBytes).toBeGreaterThan(0);
    layer.dispose();
    expect(layer.mergeSideInfoBytes).toBe(0);
  });

  test('safeMerge with exact: a NaN delta leaves W and the records untouched', () => {
    const W = Tensor.from(randomArray(16 * 16, 2, 0.05), [16, 16], { dtype: 'f16' });
    const layer = new LoraLinear({ weight: W });
    layer.addAdapter('a', { r: 2, initLoraWeights: false });
    layer.loraB.get('a')!.copyFrom(new Float32Array(32).fill(Number.NaN));
    const w0 = bits(W);
    expect(() => layer.merge({ safeMerge: true })).toThrow(expect.objectContaining({ name: 'LoraRangeError' }));
    expect(layer.merged).toBe(false);
    expect(layer.mergeSideInfoBytes).toBe(0);
    expect(sameBits(bits(W), w0)).toBe(true);
    layer.dispose();
  });

  test('bad switchMerged arguments get typed errors', () => {
    const layer = new LoraLinear({ weight: Tensor.zeros([4, 4]) });
    layer.addAdapter('a', { r: 1 });
    expect(() => layer.switchMerged('a' as unknown as string[])).toThrow(expect.objectContaining({ name: 'LoraTypeError' }));
    expect(() => layer.switchMerged(['a', 'a'])).toThrow(expect.objectContaining({ name: 'AdapterError' }));
    expect(() => layer.switchMerged(['zz'])).toThrow(expect.objectContaining({ name: 'AdapterError', message: expect.stringMatching(/names\[0\]/) }));
    expect(() => layer.merge({ exact: 1 as unknown as boolean })).toThrow(expect.objectContaining({ name: 'LoraTypeError', message: expect.stringMatching(/opts.exact/) }));
    layer.dispose();
  });

  // ‖ΔW‖ / ‖W‖ of trained LoRA adapters is typically 1–10%: 'small' and 'large' below.
  test.each([
    ['bf16', 0.01],
    ['bf16', 0.1],
    ['f16', 0.01],
    ['f16', 0.1],
  ] as const)('%s weights, delta %s of W: at most 2 bits per weight', (dtype, rel) => {
    const n = 512;
    const w = randomArray(n * n, 21, 0.02 * Math.sqrt(3));
    const layer = new LoraLinear({ weight: Tensor.from(w, [n, n], { dtype }) });
    layer.addAdapter('a', { r: 16, loraAlpha: 16, initLoraWeights: false, seed: 4 });
    const d = layer.getDeltaWeight('a').toFloat32Array();
    let dw = 0;
    let ww = 0;
    for (let i = 0; i < d.length; i++) (dw += d[i] * d[i]), (ww += w[i] * w[i]);
    layer.setScale('a', rel / Math.sqrt(dw / ww));
    layer.merge();
    const bitsPerWeight = (layer.mergeSideInfoBytes * 8) / (n * n);
    expect(bitsPerWeight).toBeLessThanOrEqual(2);
    layer.unmerge();
    layer.dispose();
  });
});

describe('exact merge: LoraModel', () => {
  test('mergeAdapter / switchMergedAdapter / unmergeAdapter over several layers restore every weight bit for bit', async () => {
    const specs = ['q', 'v', 'emb'].map((name, i) =>
      name === 'emb'
        ? { name, kind: 'embedding' as const, weight: Tensor.from(randomArray(50 * 16, 40 + i, 0.1), [50, 16], { dtype: 'bf16' }) }
        : { name, kind: 'linear' as const, weight: Tensor.from(randomArray(24 * 32, 40 + i, 0.1), [24, 32], { dtype: 'bf16' }) },
    );
    const model = new LoraModel(specs, { r: 4, loraAlpha: 8, targetModules: ['q', 'v', 'emb'], initLoraWeights: false, seed: 1 }, 'a');
    model.addAdapter('b', { r: 2, loraAlpha: 4, targetModules: ['q', 'emb'], initLoraWeights: false, seed: 2 });
    const w0 = specs.map((s) => bits(s.weight));
    model.mergeAdapter({ adapterNames: ['a'] });
    expect(model.mergeSideInfoBytes).toBeGreaterThan(0);
    model.switchMergedAdapter(['b', 'a']);
    const switched = specs.map((s) => bits(s.weight));
    await model.switchMergedAdapterAsync([]);
    specs.forEach((s, i) => expect(sameBits(bits(s.weight), w0[i])).toBe(true));
    expect(model.mergeSideInfoBytes).toBe(0);
    model.mergeAdapter({ adapterNames: ['b', 'a'] });
    specs.forEach((s, i) => expect(sameBits(bits(s.weight), switched[i])).toBe(true));
    model.unmergeAdapter();
    specs.forEach((s, i) => expect(sameBits(bits(s.weight), w0[i])).toBe(true));
    expect(() => model.switchMergedAdapter(['nope'])).toThrow(expect.objectContaining({ name: 'AdapterError' }));
  });
});
