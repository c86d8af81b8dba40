/**
 * Fuzz targets over the public API: random valid calls are compared with a float64 reference,
 * random invalid ones (one argument broken at a time) must throw a typed error naming it.
 */
import fc from 'fast-check';
import { LoraLinear, Tensor, kernels } from '../../lib';
import { gemm, relErr, roundTo, tolFor } from './float_ref';
import { Scope, expectTypedError, expectTypedRejection, floatTensor, prod, stored, tally, values } from './fuzz_common';

type FDT = 'f32' | 'f16' | 'bf16';
const floatDT = fc.constantFrom<FDT>('f32', 'f16', 'bf16');
const seedArb = fc.integer({ min: 1, max: 0x7fffffff });

function fail(msg: string): never {
  throw new Error(msg);
}

/**
 * Norm-wise relative error within tol. When the result cancels (|Σ| ≪ Σ|terms|), f32 rounding is
 * relative to the terms, so absRef (the same sum over absolute values) sets the scale if given; an
 * absolute floor covers results that underflow in 16 bits.
 */
function expectClose(got: ArrayLike<number>, ref: ArrayLike<number>, tol: number, what: string, dtype = 'f32', absRef?: ArrayLike<number>): void {
  if (got.length !== ref.length) fail(`${what}: ${got.length} values, reference has ${ref.length}`);
  const e = relErr(got, ref);
  if (e <= tol) return;
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < ref.length; i++) {
    diff += (got[i] - ref[i]) ** 2;
    scale += (absRef ? absRef[i] : ref[i]) ** 2;
  }
  const floor = (dtype === 'f16' ? 2 ** -24 : dtype === 'bf16' ? 2 ** -133 : 2 ** -149) * Math.sqrt(ref.length);
  if (!(Math.sqrt(diff) <= Math.max(floor, tol * Math.sqrt(scale)))) fail(`${what}: relative error ${e} > ${tol}`);
}

// ---- Tensor construction and copies -------------------------------------------------------

const TENSOR_MUTATIONS = [null, null, null, null, 'length', 'kind', 'detached', 'shapeNeg', 'shapeNaN', 'shapeFrac', 'shapeDims',
  'shapeOverflow', 'dtype', 'device', 'option', 'dataType', 'disposed', 'shrunk'] as const;

const tensorCase = fc.record({
  shape: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 4 }),
  dtype: fc.constantFrom('f32', 'f16', 'bf16', 'i32', 'i64'),
  source: fc.constantFrom('f32arr', 'f64arr', 'numarr', 'u16bits', 'i32arr', 'bigint'),
  seed: seedArb,
  offset: fc.integer({ min: 0, max: 3 }),
  scale: fc.constantFrom(1, 1e-6, 1e4, 1e6),
  mutation: fc.constantFrom(...TENSOR_MUTATIONS),
});

function compatible(dtype: string, source: string): boolean {
  if (dtype === 'f32') return ['f32arr', 'f64arr', 'numarr'].includes(source);
  if (dtype === 'f16' || dtype === 'bf16') return ['f32arr', 'f64arr', 'numarr', 'u16bits'].includes(source);
  if (dtype === 'i32') return source === 'i32arr';
  return source === 'bigint' || source === 'i32arr';
}

function makeData(source: string, n: number, seed: number, offset: number, scale: number) {
  const v = values(n + offset, seed).map((x) => x * scale);
  switch (source) {
    case 'f32arr':
      return Float32Array.from(v).subarray(offset);
    case 'f64arr':
      return Float64Array.from(v).subarray(offset);
    case 'numarr':
      return Array.from(v).slice(offset);
    case 'u16bits':
      return Uint16Array.from(v, (x) => Math.floor((x + 1) * 32767) & 0x7bff).subarray(offset); // finite f16/bf16 patterns
    case 'i32arr':
      return Int32Array.from(v, (x) => Math.round(x * 1e9)).subarray(offset);
    default:
      return BigInt64Array.from(v, (x) => BigInt(Math.round(x * 1e15))).subarray(offset);
  }
}

export const tensorTarget = fc.property(tensorCase, (c) => {
  const scope = new Scope();
  try {
    const n = prod(c.shape);
    const dtype = c.dtype as 'f32';
    const data = makeData(c.source, n, c.seed, c.offset, c.scale);
    if (c.mutation === null && !compatible(c.dtype, c.source)) {
      if (c.source === 'u16bits' && (c.dtype === 'i32' || c.dtype === 'i64' || c.dtype === 'f32')) return expectTypedError(() => Tensor.from(data, c.shape, { dtype }), 'data');
      return expectTypedError(() => Tensor.from(data, c.shape, { dtype }), 'data');
    }
    const src = compatible(c.dtype, c.source) ? c.source : c.dtype === 'i32' ? 'i32arr' : c.dtype === 'i64' ? 'bigint' : 'f32arr';
    const good = makeData(src, n, c.seed, c.offset, c.scale);
    switch (c.mutation) {
      case 'length':
        return expectTypedError(() => Tensor.from(makeData(src, n + 1, c.seed, c.offset, c.scale), c.shape, { dtype }), 'data');
      case 'kind':
        return expectTypedError(() => Tensor.from(new Int8Array(n) as never, c.shape, { dtype }), 'data');
      case 'detached': {
        const f = new Float32Array(n);
        structuredClone(f.buffer, { transfer: [f.buffer] });
        return expectTypedError(() => Tensor.from(f, c.shape, { dtype: c.dtype === 'i32' || c.dtype === 'i64' ? 'f32' : dtype }), 'data');
      }
      case 'shapeNeg':
        return expectTypedError(() => Tensor.from(good, [...c.shape, -1], { dtype }), 'shape');
      case 'shapeNaN':
        return expectTypedError(() => Tensor.zeros([NaN, ...c.shape], { dtype }), 'shape');
      case 'shapeFrac':
        return expectTypedError(() => Tensor.zeros([...c.shape, 1.5], { dtype }), 'shape');
      case 'shapeDims':
        return expectTypedError(() => Tensor.zeros(new Array(17).fill(1), { dtype }), 'shape');
      case 'shapeOverflow':
        return expectTypedError(() => Tensor.zeros([2 ** 27, 2 ** 27, 2 ** 27, ...c.shape.map((d) => d + 1)], { dtype }), 'shape');
      case 'dtype':
        return expectTypedError(() => Tensor.zeros(c.shape, { dtype: 'f64' as never }), 'opts.dtype');
      case 'device':
        return expectTypedError(() => Tensor.zeros(c.shape, { device: 'tpu' as never }), 'opts.device');
      case 'option':
        return expectTypedError(() => Tensor.zeros(c.shape, { dtyp: 'f32' } as never), 'opts');
      case 'dataType':
        return expectTypedError(() => Tensor.from('1,2,3' as never, c.shape, { dtype }), 'data');
      case 'disposed': {
        const t = Tensor.zeros(c.shape, { dtype });
        t.dispose();
        return expectTypedError(() => (c.dtype === 'i32' ? t.toInt32Array() : c.dtype === 'i64' ? t.toBigInt64Array() : t.toFloat32Array()), 'dispose');
      }
      case 'shrunk': {
        if (n === 0) break;
        const bytes = n * (src === 'bigint' ? 8 : src === 'f64arr' || src === 'numarr' ? 8 : src === 'u16bits' ? 2 : 4);
        const rb = new (ArrayBuffer as unknown as new (n: number, o: object) => ArrayBuffer & { resize(n: number): void })(bytes, { maxByteLength: bytes * 2 });
        const Ctor = (src === 'bigint' ? BigInt64Array : src === 'f64arr' || src === 'numarr' ? Float64Array : src === 'u16bits' ? Uint16Array : src === 'i32arr' ? Int32Array : Float32Array) as unknown as new (b: ArrayBuffer, o: number, l: number) => Float32Array;
        const view = new Ctor(rb, 0, n);
        rb.resize(bytes >> 1);
        return expectTypedError(() => Tensor.from(view, c.shape, { dtype }), 'data');
      }
    }
    // A valid construction: values as the reference rounds them.
    tally.valid++;
    const t = scope.add(Tensor.from(good, c.shape, { dtype }));
    if (t.shape.join() !== c.shape.join() || t.numel !== n) fail(`shape ${t.shape} != ${c.shape}`);
    if (c.dtype === 'i32') {
      const got = t.toInt32Array();
      (good as Int32Array).forEach((v, i) => v === got[i] || fail(`i32[${i}]: ${got[i]} != ${v}`));
    } else if (c.dtype === 'i64') {
      const got = t.toBigInt64Array();
      (good as ArrayLike<number | bigint>).length === got.length || fail('i64 length');
      Array.from(good as ArrayLike<number | bigint>).forEach((v, i) => BigInt(v) === got[i] || fail(`i64[${i}]`));
    } else if (src === 'u16bits') {
      const bits = t.toUint16Array();
      (good as Uint16Array).forEach((v, i) => v === bits[i] || fail(`bits[${i}]: ${bits[i]} != ${v}`));
    } else {
      const got = t.toFloat32Array();
      Array.from(good as ArrayLike<number>).forEach((v, i) => {
        const want = roundTo(c.dtype, Math.fround(v));
        if (!(got[i] === want || (Number.isNaN(got[i]) && Number.isNaN(want)))) fail(`${c.dtype}[${i}]: ${got[i]} != ${want} (from ${v})`);
      });
      const other = scope.add(t.to({ dtype: c.dtype === 'f32' ? 'bf16' : 'f32' }));
      const back = other.toFloat32Array();
      Array.from(got).forEach((v, i) => {
        const want = roundTo(other.dtype, v);
        if (!(back[i] === want || (Number.isNaN(back[i]) && Number.isNaN(want)))) fail(`to(${other.dtype})[${i}]: ${back[i]} != ${want}`);
      });
    }
  } finally {
    scope.dispose();
  }
});

// ---- kernels.loraLinearForward ------------------------------------------------------------

const FORWARD_MUTATIONS = [null, null, null, null, null, 'xLast', 'xInt', 'xDisposed', 'xFake', 'wRank3', 'scaleNaN', 'scaleInf', 'scaleHuge',
  'scaleStr', 'rank0', 'bShape', 'biasShape', 'biasFake', 'fifoType', 'adaptersType', 'adapterNull', 'option', 'aDisposed'] as const;

const adapterArb = fc.record({ r: fc.integer({ min: 1, max: 4 }), scale: fc.double({ min: -3, max: 3, noNaN: true }), dtA: floatDT, dtB: floatDT });

const forwardCase = fc.record({
  lead: fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 2 }),
  inF: fc.integer({ min: 1, max: 9 }),
  outF: fc.integer({ min: 1, max: 9 }),
  adapters: fc.array(adapterArb, { maxLength: 2 }),
  xdt: floatDT,
  wdt: floatDT,
  bias: fc.option(floatDT, { nil: null }),
  fifo: fc.boolean(),
  seed: seedArb,
  mutation: fc.constantFrom(...FORWARD_MUTATIONS),
});

interface BuiltLinear {
  x: Tensor;
  W: Tensor;
  bias: Tensor | null;
  adapters: Array<{ loraA: Tensor; loraB: Tensor; scaling: number }>;
}

function buildLinear(scope: Scope, c: { lead: number[]; inF: number; outF: number; adapters: Array<{ r: number; scale: number; dtA: FDT; dtB: FDT }>; xdt: FDT; wdt: FDT; bias: FDT | null; fifo: boolean; seed: number }): BuiltLinear {
  const x = floatTensor(scope, [...c.lead, c.inF], c.xdt, c.seed);
  const W = floatTensor(scope, c.fifo ? [c.inF, c.outF] : [c.outF, c.inF], c.wdt, c.seed + 1, 0.5);
  const bias = c.bias ? floatTensor(scope, [c.outF], c.bias, c.seed + 2) : null;
  const adapters = c.adapters.map((a, i) => ({
    loraA: floatTensor(scope, [a.r, c.inF], a.dtA, c.seed + 10 + i),
    loraB: floatTensor(scope, [c.outF, a.r], a.dtB, c.seed + 20 + i),
    scaling: a.scale,
  }));
  return { x, W, bias, adapters };
}

/** Float64 y for stored inputs (abs: the same sums over absolute values); W is read in [out, in] order. */
function forwardRef(b: BuiltLinear, fifo: boolean, abs = false): Float64Array {
  const inF = b.x.shape[b.x.shape.length - 1];
  const outF = fifo ? b.W.shape[1] : b.W.shape[0];
  const n = b.x.numel / inF;
  const st = (t: Tensor) => (abs ? stored(t).map(Math.abs) : stored(t));
  const x = st(b.x);
  const w = st(b.W);
  const wAt = fifo ? (o: number, i: number) => w[i * outF + o] : (o: number, i: number) => w[o * inF + i];
  const y = gemm(n, outF, inF, (i, p) => x[i * inF + p], (p, j) => wAt(j, p));
  if (b.bias) {
    const bv = st(b.bias);
    for (let i = 0; i < n; i++) for (let j = 0; j < outF; j++) y[i * outF + j] += bv[j];
  }
  for (const a of b.adapters) {
    const r = a.loraA.shape[0];
    const A = st(a.loraA);
    const B = st(a.loraB);
    const u = gemm(n, r, inF, (i, p) => x[i * inF + p], (p, j) => A[j * inF + p]);
    const d = gemm(n, outF, r, (i, p) => Math.fround(u[i * r + p]), (p, j) => B[j * r + p]);
    for (let i = 0; i < y.length; i++) y[i] += (abs ? Math.abs(a.scaling) : a.scaling) * d[i];
  }
  return y;
}

export const forwardTarget = fc.property(forwardCase, (c) => {
  const scope = new Scope();
  try {
    const b = buildLinear(scope, c);
    const opts = { bias: b.bias, fanInFanOut: c.fifo, adapters: b.adapters };
    const call = (x: Tensor, W: Tensor, o: object) => kernels.loraLinearForward(x, W, o as never);
    const first = () => {
      if (b.adapters.length === 0) b.adapters.push({ loraA: floatTensor(scope, [2, c.inF], 'f32', 3), loraB: floatTensor(scope, [c.outF, 2], 'f32', 4), scaling: 1 });
      return b.adapters[0];
    };
    switch (c.mutation) {
      case 'xLast':
        return expectTypedError(() => call(floatTensor(scope, [...c.lead, c.inF + 1], c.xdt, 1), b.W, opts), 'x');
      case 'xInt':
        return expectTypedError(() => call(scope.add(Tensor.zeros([...c.lead, c.inF], { dtype: 'i32' })), b.W, opts), 'x');
      case 'xDisposed':
        b.x.dispose();
        return expectTypedError(() => call(b.x, b.W, opts), 'x');
      case 'xFake':
        return expectTypedError(() => call({ shape: b.x.shape, dtype: 'f32' } as never, b.W, opts), 'x');
      case 'wRank3':
        return expectTypedError(() => call(b.x, floatTensor(scope, [1, ...b.W.shape], c.wdt, 2), opts), 'weight');
      case 'scaleNaN':
      case 'scaleInf':
      case 'scaleHuge':
      case 'scaleStr':
        first().scaling = { scaleNaN: NaN, scaleInf: -Infinity, scaleHuge: 4e38, scaleStr: '1' }[c.mutation] as number;
        return expectTypedError(() => call(b.x, b.W, { ...opts, adapters: b.adapters }), 'opts.adapters[0].scaling');
      case 'rank0':
        first().loraA = scope.add(Tensor.zeros([0, c.inF]));
        b.adapters[0].loraB = scope.add(Tensor.zeros([c.outF, 0]));
        return expectTypedError(() => call(b.x, b.W, { ...opts, adapters: b.adapters }), 'opts.adapters[0].loraA');
      case 'bShape':
        first().loraB = floatTensor(scope, [c.outF + 1, b.adapters[0].loraA.shape[0]], 'f32', 5);
        return expectTypedError(() => call(b.x, b.W, { ...opts, adapters: b.adapters }), 'opts.adapters[0].loraB');
      case 'biasShape':
        return expectTypedError(() => call(b.x, b.W, { ...opts, bias: floatTensor(scope, [c.outF + 1], 'f32', 6) }), 'opts.bias');
      case 'biasFake':
        return expectTypedError(() => call(b.x, b.W, { ...opts, bias: [1, 2] }), 'opts.bias');
      case 'fifoType':
        return expectTypedError(() => call(b.x, b.W, { ...opts, fanInFanOut: 'yes' }), 'opts.fanInFanOut');
      case 'adaptersType':
        return expectTypedError(() => call(b.x, b.W, { ...opts, adapters: { length: 1 } }), 'opts.adapters');
      case 'adapterNull':
        return expectTypedError(() => call(b.x, b.W, { ...opts, adapters: [null] }), 'opts.adapters[0]');
      case 'option':
        return expectTypedError(() => call(b.x, b.W, { ...opts, scaling: 1 }), 'opts');
      case 'aDisposed':
        first().loraA.dispose();
        return expectTypedError(() => call(b.x, b.W, { ...opts, adapters: b.adapters }), 'opts.adapters[0].loraA');
    }
    tally.valid++;
    const y = scope.add(call(b.x, b.W, opts));
    const want = [...c.lead, c.outF];
    if (y.shape.join() !== want.join() || y.dtype !== c.xdt) fail(`y is ${y.shape} ${y.dtype}, expected ${want} ${c.xdt}`);
    const ref = forwardRef(b, c.fifo);
    expectClose(y.toFloat32Array(), ref, tolFor(c.xdt), 'loraLinearForward', c.xdt, forwardRef(b, c.fifo, true));
  } finally {
    scope.dispose();
  }
});

// ---- kernels.mergeAdapter / unmergeAdapter ------------------------------------------------

const MERGE_MUTATIONS = [null, null, null, null, 'scaleNaN', 'scaleHuge', 'rank0', 'aShape', 'bShape', 'outShape', 'outInt', 'w1d',
  'fifoType', 'option', 'adapterNull', 'wDisposed'] as const;

const mergeCase = fc.record({
  inF: fc.integer({ min: 1, max: 12 }),
  outF: fc.integer({ min: 1, max: 12 }),
  ad: adapterArb,
  wdt: floatDT,
  outDT: fc.option(floatDT, { nil: null }),
  fifo: fc.boolean(),
  unmerge: fc.boolean(),
  seed: seedArb,
  mutation: fc.constantFrom(...MERGE_MUTATIONS),
});

export const mergeTarget = fc.property(mergeCase, (c) => {
  const scope = new Scope();
  try {
    const wShape = c.fifo ? [c.inF, c.outF] : [c.outF, c.inF];
    const W = floatTensor(scope, wShape, c.wdt, c.seed);
    const ad = { loraA: floatTensor(scope, [c.ad.r, c.inF], c.ad.dtA, c.seed + 1), loraB: floatTensor(scope, [c.outF, c.ad.r], c.ad.dtB, c.seed + 2), scaling: c.ad.scale };
    const out = c.outDT ? scope.add(Tensor.zeros(wShape, { dtype: c.outDT })) : undefined;
    const fn = c.unmerge ? kernels.unmergeAdapter : kernels.mergeAdapter;
    const opts = { fanInFanOut: c.fifo, ...(out ? { out } : {}) };
    switch (c.mutation) {
      case 'scaleNaN':
        return expectTypedError(() => fn(W, { ...ad, scaling: NaN }, opts), 'adapter.scaling');
      case 'scaleHuge':
        return expectTypedError(() => fn(W, { ...ad, scaling: -1e300 }, opts), 'adapter.scaling');
      case 'rank0':
        return expectTypedError(() => fn(W, { ...ad, loraA: scope.add(Tensor.zeros([0, c.inF])), loraB: scope.add(Tensor.zeros([c.outF, 0])) }, opts), 'adapter.loraA');
      case 'aShape':
        return expectTypedError(() => fn(W, { ...ad, loraA: floatTensor(scope, [c.ad.r, c.inF + 1], 'f32', 3) }, opts), 'adapter.loraA');
      case 'bShape':
        return expectTypedError(() => fn(W, { ...ad, loraB: floatTensor(scope, [c.outF, c.ad.r + 1], 'f32', 3) }, opts), 'adapter.loraB');
      case 'outShape':
        return expectTypedError(() => fn(W, ad, { ...opts, out: scope.add(Tensor.zeros([wShape[0] + 1, wShape[1]])) }), 'opts.out');
      case 'outInt':
        return expectTypedError(() => fn(W, ad, { ...opts, out: scope.add(Tensor.zeros(wShape, { dtype: 'i64' })) }), 'opts.out');
      case 'w1d':
        return expectTypedError(() => fn(floatTensor(scope, [c.inF * c.outF], 'f32', 4), ad, { fanInFanOut: c.fifo }), 'weight');
      case 'fifoType':
        return expectTypedError(() => fn(W, ad, { ...opts, fanInFanOut: 0 as never }), 'opts.fanInFanOut');
      case 'option':
        return expectTypedError(() => fn(W, ad, { ...opts, inPlace: true } as never), 'opts');
      case 'adapterNull':
        return expectTypedError(() => fn(W, null as never, opts), 'adapter');
      case 'wDisposed':
        W.dispose();
        return expectTypedError(() => fn(W, ad, opts), 'weight');
    }
    tally.valid++;
    const w0 = stored(W);
    const A = stored(ad.loraA);
    const B = stored(ad.loraB);
    const r = c.ad.r;
    const sign = c.unmerge ? -1 : 1;
    // ΔW[o, i] = Σ_k B[o, k]·A[k, i], laid out like W.
    const ref = new Float64Array(w0.length);
    const absRef = new Float64Array(w0.length);
    for (let o = 0; o < c.outF; o++)
      for (let i = 0; i < c.inF; i++) {
        let d = 0;
        let da = 0;
        for (let k = 0; k < r; k++) {
          d += B[o * r + k] * A[k * c.inF + i];
          da += Math.abs(B[o * r + k] * A[k * c.inF + i]);
        }
        const idx = c.fifo ? i * c.outF + o : o * c.inF + i;
        ref[idx] = w0[idx] + sign * c.ad.scale * d;
        absRef[idx] = Math.abs(w0[idx]) + Math.abs(c.ad.scale) * da;
      }
    const res = fn(W, ad, opts);
    if (res !== (out ?? W)) fail('mergeAdapter returned another tensor than the output');
    expectClose(res.toFloat32Array(), ref, tolFor(res.dtype), c.unmerge ? 'unmergeAdapter' : 'mergeAdapter', res.dtype, absRef);
  } finally {
    scope.dispose();
  }
});

// ---- LoraLinear -------------------------------------------------------------------------------

const LAYER_MUTATIONS = [null, null, null, null, null, 'r', 'alpha', 'dropout', 'dtype', 'init', 'optionKey', 'nameEmpty', 'nameDup', 'nameBase',
  'setAdapter', 'forwardX', 'backwardNoForward', 'backwardDy', 'deleteUnknown', 'mergeNames', 'ctorWeight', 'ctorBias', 'ctorMissing'] as const;

const layerAdapterArb = fc.record({
  r: fc.integer({ min: 1, max: 4 }),
  alpha: fc.double({ min: -16, max: 16, noNaN: true }),
  rslora: fc.boolean(),
  init: fc.constantFrom<boolean | 'gaussian'>(false, false, 'gaussian', true),
  dtype: floatDT,
});

const layerCase = fc.record({
  inF: fc.integer({ min: 1, max: 8 }),
  outF: fc.integer({ min: 1, max: 8 }),
  lead: fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 2 }),
  fifo: fc.boolean(),
  bias: fc.boolean(),
  adapters: fc.array(layerAdapterArb, { minLength: 1, maxLength: 2 }),
  training: fc.boolean(),
  seed: seedArb,
  badValue: fc.constantFrom<unknown>(0, -1, 1.5, NaN, Infinity, '2', 1e300, null),
  mutation: fc.constantFrom(...LAYER_MUTATIONS),
});

export const layerTarget = fc.property(layerCase, (c) => {
  const scope = new Scope();
  try {
    const wShape = c.fifo ? [c.inF, c.outF] : [c.outF, c.inF];
    const W = floatTensor(scope, wShape, 'f32', c.seed, 0.5);
    const bias = c.bias ? floatTensor(scope, [c.outF], 'f32', c.seed + 1) : null;
    switch (c.mutation) {
      case 'ctorWeight':
        return expectTypedError(() => new LoraLinear({ weight: floatTensor(scope, [c.inF], 'f32', 2) }), 'opts.weight');
      case 'ctorBias':
        return expectTypedError(() => new LoraLinear({ weight: W, bias: floatTensor(scope, [c.outF + 1], 'f32', 2), fanInFanOut: c.fifo }), 'opts.bias');
      case 'ctorMissing':
        return expectTypedError(() => new LoraLinear({} as never), 'opts.weight');
    }
    const layer = new LoraLinear({ weight: W, bias, fanInFanOut: c.fifo });
    try {
      const names = c.adapters.map((_, i) => `ad${i}`);
      c.adapters.forEach((a, i) =>
        layer.addAdapter(names[i], { r: a.r, loraAlpha: a.alpha, useRslora: a.rslora, initLoraWeights: a.init, dtype: a.dtype, seed: c.seed + i }),
      );
      layer.setAdapter(names);
      const bad = c.badValue as number;
      const x = floatTensor(scope, [...c.lead, c.inF], 'f32', c.seed + 5);
      switch (c.mutation) {
        case 'r':
          return expectTypedError(() => layer.addAdapter('z', { r: bad === 1e300 ? 0 : bad === null ? -3 : bad }), 'opts.r');
        case 'alpha':
          return expectTypedError(() => layer.addAdapter('z', { loraAlpha: bad === null ? NaN : typeof bad === 'number' && Number.isFinite(bad) && Math.abs(bad) < 1e39 ? 1e39 : bad }), 'opts.loraAlpha');
        case 'dropout':
          return expectTypedError(() => layer.addAdapter('z', { loraDropout: bad === null ? -1 : typeof bad === 'number' && bad >= 0 && bad < 1 ? 1 : bad }), 'opts.loraDropout');
        case 'dtype':
          return expectTypedError(() => layer.addAdapter('z', { dtype: 'f64' as never }), 'opts.dtype');
        case 'init':
          return expectTypedError(() => layer.addAdapter('z', { initLoraWeights: 'uniform' as never }), 'opts.initLoraWeights');
        case 'optionKey':
          return expectTypedError(() => layer.addAdapter('z', { lora_alpha: 8 } as never), 'opts');
        case 'nameEmpty':
          return expectTypedError(() => layer.addAdapter('' as never), 'name');
        case 'nameDup':
          return expectTypedError(() => layer.addAdapter(names[0]), 'name');
        case 'nameBase':
          return expectTypedError(() => layer.addAdapter('__base__'), 'name');
        case 'setAdapter':
          return expectTypedError(() => layer.setAdapter([names[0], 'nope']), 'names[1]');
        case 'forwardX':
          return expectTypedError(() => layer.forward(floatTensor(scope, [...c.lead, c.inF + 2], 'f32', 3)), 'x');
        case 'backwardNoForward':
          return expectTypedError(() => layer.backward(floatTensor(scope, [...c.lead, c.outF], 'f32', 3)), 'backward');
        case 'backwardDy':
          layer.train();
          scope.add(layer.forward(x));
          return expectTypedError(() => layer.backward(floatTensor(scope, [...c.lead, c.outF + 1], 'f32', 3)), 'dy');
        case 'deleteUnknown':
          return expectTypedError(() => layer.deleteAdapter('nope'), 'name');
        case 'mergeNames':
          return expectTypedError(() => layer.merge({ adapterNames: ['zz'] }), 'opts.adapterNames[0]');
      }
      tally.valid++;
      layer.train(c.training);
      const y = scope.add(layer.forward(x));
      const built: BuiltLinear = {
        x,
        W,
        bias,
        adapters: names.map((n) => ({ loraA: layer.loraA.get(n)!, loraB: layer.loraB.get(n)!, scaling: layer.scaling.get(n)! })),
      };
      const yRef = forwardRef(built, c.fifo);
      expectClose(y.toFloat32Array(), yRef, 2e-5, 'LoraLinear.forward', 'f32', forwardRef(built, c.fifo, true));
      if (c.training) {
        const dy = floatTensor(scope, [...c.lead, c.outF], 'f32', c.seed + 9);
        const { dx, grads } = layer.backward(dy);
        scope.add(dx);
        for (const g of grads.values()) scope.add(g.loraA) && scope.add(g.loraB);
        checkBackward(built, c.fifo, stored(dy), dx, grads, names);
      }
      // merge then unmerge: the forward is unchanged by the merge, the weight comes back.
      const w0 = stored(W);
      layer.eval();
      layer.merge({ safeMerge: true });
      const ym = scope.add(layer.forward(x));
      expectClose(ym.toFloat32Array(), yRef, 5e-5, 'forward after merge', 'f32', forwardRef(built, c.fifo, true));
      layer.unmerge();
      expectClose(stored(W), w0, 1e-5, 'weight after unmerge');
    } finally {
      layer.dispose();
    }
  } finally {
    scope.dispose();
  }
});

function checkBackward(
  b: BuiltLinear,
  fifo: boolean,
  dy: Float64Array,
  dx: Tensor,
  grads: Map<string, { loraA: Tensor; loraB: Tensor }>,
  names: string[],
): void {
  const inF = b.x.shape[b.x.shape.length - 1];
  const outF = fifo ? b.W.shape[1] : b.W.shape[0];
  const n = b.x.numel / inF;
  const x = stored(b.x);
  const w = stored(b.W);
  const wAt = fifo ? (o: number, i: number) => w[i * outF + o] : (o: number, i: number) => w[o * inF + i];
  const dxRef = gemm(n, inF, outF, (i, p) => dy[i * outF + p], (p, j) => wAt(p, j));
  b.adapters.forEach((a, k) => {
    const r = a.loraA.shape[0];
    const A = stored(a.loraA);
    const B = stored(a.loraB);
    const g = gemm(n, r, outF, (i, p) => a.scaling * dy[i * outF + p], (p, j) => B[p * r + j]); // s·dy·B [n, r]
    const gx = gemm(n, inF, r, (i, p) => g[i * r + p], (p, j) => A[p * inF + j]);
    for (let i = 0; i < dxRef.length; i++) dxRef[i] += gx[i];
    const u = gemm(n, r, inF, (i, p) => x[i * inF + p], (p, j) => A[j * inF + p]);
    const dA = gemm(r, inF, n, (i, p) => g[p * r + i], (p, j) => x[p * inF + j]);
    const dB = gemm(outF, r, n, (i, p) => a.scaling * dy[p * outF + i], (p, j) => Math.fround(u[p * r + j]));
    const gr = grads.get(names[k]);
    if (!gr) fail(`no gradients for ${names[k]}`);
    expectClose(gr.loraA.toFloat32Array(), dA, tolFor(gr.loraA.dtype), `dA ${names[k]}`, gr.loraA.dtype);
    expectClose(gr.loraB.toFloat32Array(), dB, tolFor(gr.loraB.dtype), `dB ${names[k]}`, gr.loraB.dtype);
  });
  expectClose(dx.toFloat32Array(), dxRef, 2e-5, 'dx');
}

// ---- async forms ------------------------------------------------------------------------------

export const asyncTarget = fc.asyncProperty(forwardCase, fc.boolean(), async (c, invalid) => {
  const scope = new Scope();
  try {
    const b = buildLinear(scope, c);
    const opts = { bias: b.bias, fanInFanOut: c.fifo, adapters: b.adapters };
    if (invalid) {
      await expectTypedRejection(() => kernels.loraLinearForwardAsync(floatTensor(scope, [...c.lead, c.inF + 1], 'f32', 1), b.W, opts), 'x');
      return;
    }
    tally.valid++;
    const ya = scope.add(await kernels.loraLinearForwardAsync(b.x, b.W, opts));
    const ys = scope.add(kernels.loraLinearForward(b.x, b.W, opts));
    const ga = ya.toFloat32Array();
    const gs = ys.toFloat32Array();
    ga.forEach((v, i) => Object.is(v, gs[i]) || (Number.isNaN(v) && Number.isNaN(gs[i])) || fail(`async y[${i}] ${v} != sync ${gs[i]}`));
    if (b.adapters.length > 0) {
      const W2 = scope.add(b.W.clone());
      await kernels.mergeAdapterAsync(W2, b.adapters[0], { fanInFanOut: c.fifo });
      const W3 = scope.add(b.W.clone());
      kernels.mergeAdapter(W3, b.adapters[0], { fanInFanOut: c.fifo });
      const a2 = W2.toFloat32Array();
      const a3 = W3.toFloat32Array();
      a2.forEach((v, i) => Object.is(v, a3[i]) || fail(`async merge [${i}] ${v} != sync ${a3[i]}`));
    }
  } finally {
    scope.dispose();
  }
});
