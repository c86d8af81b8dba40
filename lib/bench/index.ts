/**
 * `bench()`: times lorakit's CPU kernels (base GEMM, fused LoRA forward, forward+backward, merge)
 * over a grid of shapes, next to the machine's own measured ceilings (FMA peak, copy and read
 * bandwidth) and a reference measured in the same run (OpenBLAS sgemm, when installed). Times are
 * the best of several runs (the machine may be shared); medians are kept in the JSON too.
 */
import * as fs from 'fs';
import * as path from 'path';
import { FloatDType } from '../dtype';
import { LoraRangeError, LoraTypeError } from '../errors';
import { writeFileAtomicSync } from '../io/atomic';
import { backendInfo, gemmWInPlaceLabel, kernels, setNumThreads } from '../kernels';
import { LoraLinear } from '../layers/linear';
import { MeasuredPeaks, call } from '../native';
import { Rng } from '../rng';
import { Tensor } from '../tensor';
import { MachineInfo, machineInfo, openblasCoretypes } from './machine';
import { OpenblasRef, fastestCoretype, prepareOpenblas, timeSgemm } from './openblas';
import { BENCH_DTYPES, DEFAULT_BENCH_OPS, BenchDType, BenchOp, BenchOptions, checkBenchOptions } from './options';
import { timeSwap } from './swap';

export type { BenchDType, BenchOp, BenchOptions } from './options';

export interface BenchRow {
  op: BenchOp;
  dtype: BenchDType;
  d: number;
  r: number | null;
  n: number | null;
  ms: number;
  medianMs: number;
  gflops: number | null;
  gbs: number | null;
  /** Which ceiling peakShare refers to: 'fma', 'amx', 'dpbf16' (AVX512-BF16), 'read' or 'copy'. */
  peakKind: string;
  peakShare: number;
  /** Reference time / lorakit time (> 1: lorakit faster); what the reference is, in refWhat. */
  vsReference: number | null;
  refMs: number | null;
  refWhat: string | null;
  /** LoRA forward time / lorakit's own base GEMM time for the same (d, n, dtype), timed alternately. */
  vsBase: number | null;
  /** W fits in the last-level cache: bandwidth shares above 100% then mean cache, not DRAM. */
  wInCache: boolean;
}

export interface BenchResult {
  date: string;
  command: string;
  machine: MachineInfo;
  cpuPath: string;
  cpuPaths: string[];
  threads: number;
  peaks: MeasuredPeaks;
  reference: (OpenblasRef & { maxRelErr: number }) | { unavailable: string } | null;
  rows: BenchRow[];
  /** The issue's targets, evaluated on these rows. */
  targets: Array<{ target: string; measured: string; met: boolean | null }>;
  file: string | null;
}


/** Seeded benchmark data in [-scale, scale): the library's own generator (values do not affect timing). */
function fill(n: number, seed: number, scale: number): Float32Array {
  return new Rng(seed).fillUniform(new Float32Array(n), -scale, scale);
}

function timeIt(fn: () => void, minTime: number): { best: number; median: number } {
  fn(); // warm-up (first touch, caches, pool wake-up)
  const times: number[] = [];
  const start = process.hrtime.bigint();
  while (times.length < 3 || (times.length < 200 && Number(process.hrtime.bigint() - start) / 1e9 < minTime)) {
    const t0 = process.hrtime.bigint();
    fn();
    times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  times.sort((a, b) => a - b);
  return { best: times[0], median: times[times.length >> 1] };
}

/** Times a and b alternately, so that both see the same machine load (their ratio is what matters). */
function timePair(a: () => void, b: () => void, minTime: number): [{ best: number; median: number }, { best: number; median: number }] {
  a();
  b();
  const ta: number[] = [];
  const tb: number[] = [];
  const start = process.hrtime.bigint();
  const lap = (fn: () => void, into: number[]) => {
    const t0 = process.hrtime.bigint();
    fn();
    into.push(Number(process.hrtime.bigint() - t0) / 1e9);
  };
  while (ta.length < 3 || (ta.length < 200 && Number(process.hrtime.bigint() - start) / 1e9 < 2 * minTime)) {
    lap(a, ta);
    lap(b, tb);
  }
  const stat = (t: number[]) => {
    t.sort((x, y) => x - y);
    return { best: t[0], median: t[t.length >> 1] };
  };
  return [stat(ta), stat(tb)];
}

/**
 * Runs the benchmark; prints nothing itself (see formatTable) and writes a JSON file only when
 * given `outDir`. Unknown option keys are refused.
 */
export async function bench(options: BenchOptions = {}): Promise<BenchResult> {
  const opts = checkBenchOptions(options);
  const quick = opts.quick ?? false;
  const ds = opts.d ?? [1024, 4096];
  const rs = opts.r ?? (quick ? [16] : [8, 16, 64]);
  const ns = opts.n ?? (quick ? [1, 128] : [1, 16, 128, 512]);
  const dtypes = opts.dtypes ?? BENCH_DTYPES;
  const ops = opts.ops ?? DEFAULT_BENCH_OPS;
  for (const r of rs) for (const d of ds) if (r > d) throw new LoraRangeError(`r: ${r} exceeds d = ${d}`);
  const minTime = opts.minTime ?? (quick ? 0.3 : 1);
  const progress = opts.progress ?? (() => undefined);
  const seed = opts.seed ?? 1;

  const before = backendInfo().threads;
  if (opts.threads !== undefined) setNumThreads(opts.threads);
  try {
    const info = backendInfo();
    const machine = machineInfo();
    progress('measuring the machine: FMA peak, copy and read bandwidth');
    const peaks = call((b) => b.measurePeaks(opts.peakBufferBytes ?? 512 * 1024 * 1024));

    let ref: OpenblasRef | null = null;
    let reference: BenchResult['reference'] = null;
    let refErr = 0;
    if (opts.reference !== false && ops.some((o) => o !== 'merge' && o !== 'swap')) {
      const candidates = openblasCoretypes(machine);
      const forced = opts.openblasCoretype !== undefined && opts.openblasCoretype !== 'fastest' ? opts.openblasCoretype : null;
      const p = prepareOpenblas({ library: opts.openblasLibrary, coretype: forced ?? candidates[0] ?? null, threads: info.threads });
      if (typeof p === 'string') reference = { unavailable: p };
      else if (forced !== null || candidates.length < 2) ref = p;
      else {
        // The reference is OpenBLAS at its best on this CPU: each kernel family it can run, timed on
        // the largest GEMM of the run (capped at n 512, d 4096).
        const probeN = Math.min(512, Math.max(...ns.filter((n) => n > 1), 128));
        const probeD = Math.min(4096, Math.max(...ds));
        progress(`timing OpenBLAS's kernel families (${candidates.join(', ')}) to pick the fastest reference`);
        ref = fastestCoretype(p, candidates, [probeN, probeD, probeD], 3);
      }
    }
    const refCache = new Map<string, number | null>();
    // One run of the reference (best of its repetitions); the cache keeps the best run seen per shape.
    const refRun = (m: number, d: number, reps: number): number | null => {
      if (!ref) return null;
      const t = timeSgemm(ref, m, d, d, reps);
      if (typeof t === 'string') throw new Error(`OpenBLAS reference failed: ${t}`);
      refErr = Math.max(refErr, t.maxRelErr);
      const key = `${m},${d}`;
      const prev = refCache.get(key);
      refCache.set(key, prev === undefined || prev === null ? t.seconds : Math.min(prev, t.seconds));
      return refCache.get(key)!;
    };
    const refReps = (m: number, d: number, share: number) =>
      m === 1 ? 50 : Math.max(3, Math.min(20, Math.ceil((share * minTime * 20e9) / (2 * m * d * d))));
    const refTime = (m: number, d: number): number | null => {
      if (!ref) return null;
      const key = `${m},${d}`;
      return refCache.has(key) ? refCache.get(key)! : refRun(m, d, refReps(m, d, 1));
    };
    // lorakit and the reference timed in alternating rounds, so that both see the same load of a
    // shared machine (the best of each is kept): their ratio is what the gemm rows report.
    const ROUNDS = 5;
    const interleaved = (fn: () => void, m: number, d: number): [{ best: number; median: number }, number | null] => {
      let best = Infinity;
      const medians: number[] = [];
      let rt: number | null = null;
      for (let i = 0; i < ROUNDS; i++) {
        const t = timeIt(fn, minTime / ROUNDS);
        best = Math.min(best, t.best);
        medians.push(t.median);
        rt = ref ? refRun(m, d, refReps(m, d, 1 / ROUNDS)) : null;
      }
      medians.sort((a, b) => a - b);
      return [{ best, median: medians[medians.length >> 1] }, rt];
    };

    const rows: BenchRow[] = [];
    const inCache = (bytes: number) => machine.l3Bytes !== null && bytes <= machine.l3Bytes;
    const ceiling = (dt: BenchDType): [string, number] =>
      dt === 'bf16' && peaks.amxGflops > 0 ? ['amx', peaks.amxGflops]
        : dt === 'bf16' && peaks.bf16DotGflops > 0 ? ['dpbf16', peaks.bf16DotGflops]
          : ['fma', peaks.fmaGflops];

    for (const dtype of dtypes) {
      const es = dtype === 'f32' ? 4 : 2;
      for (const d of ds) {
        const W = Tensor.from(fill(d * d, seed, 0.02), [d, d], { dtype: dtype as FloatDType });
        try {
          const compute = (op: BenchOp, r: number | null, n: number, flops: number, t: { best: number; median: number }, refS: number | null, refWhat: string | null) => {
            const gflops = flops / t.best / 1e9;
            const gemv = n === 1 && op !== 'fwdbwd';
            const gbs = gemv ? (d * d * es) / t.best / 1e9 : null;
            const [kind, peak] = gemv ? ['read', peaks.readGBs] : ceiling(dtype);
            const row: BenchRow = {
              op, dtype, d, r, n,
              ms: t.best * 1e3,
              medianMs: t.median * 1e3,
              gflops,
              gbs,
              peakKind: kind,
              peakShare: (gemv ? gbs! : gflops) / peak,
              vsReference: refS !== null ? refS / t.best : null,
              refMs: refS !== null ? refS * 1e3 : null,
              refWhat,
              vsBase: null,
              wInCache: inCache(d * d * es),
            };
            return row;
          };
          for (const n of ns) {
            const x = Tensor.from(fill(n * d, seed + 1, 1), [n, d], { dtype: dtype as FloatDType });
            try {
              if (ops.includes('gemm')) {
                progress(`gemm ${dtype} d=${d} n=${n}`);
                const [t, rt] = interleaved(() => kernels.loraLinearForward(x, W).dispose(), n, d);
                rows.push(compute('gemm', null, n, 2 * n * d * d, t, rt, rt === null ? null : 'OpenBLAS sgemm f32, same shape, timed alternately'));
              }
              for (const r of rs) {
                if (!ops.includes('forward') && !ops.includes('fwdbwd')) break;
                const A = Tensor.from(fill(r * d, seed + 2, 0.02), [r, d]);
                const B = Tensor.from(fill(d * r, seed + 3, 0.02), [d, r]);
                try {
                  if (ops.includes('forward')) {
                    progress(`forward ${dtype} d=${d} r=${r} n=${n}`);
                    const adapters = [{ loraA: A, loraB: B, scaling: 2 }];
                    // Timed alternately with the base GEMM of the same shape: vsBase compares like with like.
                    const [tBase, t] = timePair(
                      () => kernels.loraLinearForward(x, W).dispose(),
                      () => kernels.loraLinearForward(x, W, { adapters }).dispose(),
                      minTime,
                    );
                    const rt = refTime(n, d);
                    const row = compute('forward', r, n, 2 * n * d * d + 4 * n * d * r, t, rt, rt === null ? null : 'OpenBLAS sgemm f32 (base only)');
                    row.vsBase = row.ms / (tBase.best * 1e3);
                    rows.push(row);
                  }
                  if (ops.includes('fwdbwd')) {
                    progress(`forward+backward ${dtype} d=${d} r=${r} n=${n}`);
                    const layer = new LoraLinear({ weight: W });
                    layer.addAdapter('bench', { r, loraAlpha: 2 * r, initLoraWeights: false, seed });
                    layer.train();
                    const dy = Tensor.from(fill(n * d, seed + 4, 1), [n, d], { dtype: dtype as FloatDType });
                    try {
                      const t = timeIt(() => {
                        layer.forward(x).dispose();
                        const g = layer.backward(dy);
                        g.dx.dispose();
                        for (const a of g.grads.values()) {
                          a.loraA.dispose();
                          a.loraB.dispose();
                        }
                      }, minTime);
                      const rt = refTime(n, d);
                      rows.push(compute('fwdbwd', r, n, 4 * n * d * d + 12 * n * d * r, t, rt === null ? null : 2 * rt, rt === null ? null : 'OpenBLAS 2 x sgemm f32 (y and dx only)'));
                    } finally {
                      dy.dispose();
                      layer.dispose();
                    }
                  }
                } finally {
                  A.dispose();
                  B.dispose();
                }
              }
            } finally {
              x.dispose();
            }
          }
          if (ops.includes('merge')) {
            for (const r of rs) {
              progress(`merge ${dtype} d=${d} r=${r}`);
              const ad = { loraA: Tensor.from(fill(r * d, seed + 5, 0.02), [r, d]), loraB: Tensor.from(fill(d * r, seed + 6, 0.02), [d, r]), scaling: 1 };
              try {
                let sign = 1;
                const t = timeIt(() => {
                  if (sign > 0) kernels.mergeAdapter(W, ad);
                  else kernels.unmergeAdapter(W, ad);
                  sign = -sign;
                }, minTime);
                const bytes = 2 * d * d * es;
                rows.push({
                  op: 'merge', dtype, d, r, n: null,
                  ms: t.best * 1e3,
                  medianMs: t.median * 1e3,
                  gflops: (2 * d * d * r) / t.best / 1e9,
                  gbs: bytes / t.best / 1e9,
                  peakKind: 'copy',
                  peakShare: bytes / t.best / 1e9 / peaks.copyGBs,
                  vsReference: null, refMs: null, refWhat: null, vsBase: null,
                  wInCache: inCache(d * d * es),
                });
              } finally {
                ad.loraA.dispose();
                ad.loraB.dispose();
              }
            }
          }
          if (ops.includes('swap') || ops.includes('exact')) {
            for (const r of rs) {
              progress(`swap ${dtype} d=${d} r=${r}`);
              const t = timeSwap(W, r, minTime, seed, timePair);
              const bytes = 2 * d * d * es;
              const row = (op: BenchOp, x: { best: number; median: number }, ref: { best: number }, refWhat: string): BenchRow => ({
                op, dtype, d, r, n: null,
                ms: x.best * 1e3,
                medianMs: x.median * 1e3,
                gflops: null,
                gbs: bytes / x.best / 1e9,
                peakKind: 'copy',
                peakShare: bytes / x.best / 1e9 / peaks.copyGBs,
                vsReference: ref.best / x.best, refMs: ref.best * 1e3, refWhat,
                vsBase: null,
                wInCache: inCache(d * d * es),
              });
              const half = (x: { best: number; median: number }) => ({ best: x.best / 2, median: x.median / 2 });
              rows.push(row('exact', half(t.exact), half(t.peft), `peft merge/unmerge; side info ${t.sideBits.toFixed(2)} bits/weight`));
              rows.push(row('swap', t.swap, t.unmergeMerge, 'exact unmerge + merge'));
            }
          }
        } finally {
          W.dispose();
        }
      }
    }
    if (ref) reference = { ...ref, maxRelErr: refErr };

    const result: BenchResult = {
      date: new Date().toISOString(),
      command: opts.command ?? `bench(${JSON.stringify({ ...opts, progress: undefined })})`,
      machine,
      cpuPath: info.cpuPath,
      cpuPaths: info.cpuPaths,
      threads: info.threads,
      // The GEMM's blocks as the runs left them (timed on the first large calls where two apply).
      peaks: { ...peaks, gemmBlocks: backendInfo().gemmBlocks },
      reference,
      rows,
      targets: evaluateTargets(rows),
      file: null,
    };
    if (opts.outDir !== undefined && opts.outDir !== null) {
      const dir = path.resolve(opts.outDir);
      const slug = machine.cpuModel.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 40) || 'cpu';
      const file = path.join(dir, `${result.date.replace(/[:.]/g, '-')}-${slug}-${info.cpuPath}.json`);
      result.file = file;
      fs.mkdirSync(dir, { recursive: true });
      writeFileAtomicSync(file, JSON.stringify(result, null, 2) + '\n');
    }
    return result;
  } finally {
    if (opts.threads !== undefined) setNumThreads(before);
  }
}

function worst<T>(rows: T[], key: (r: T) => number, dir: 'min' | 'max'): T | null {
  if (!rows.length) return null;
  return rows.reduce((a, b) => ((dir === 'min' ? key(b) < key(a) : key(b) > key(a)) ? b : a));
}

/** The issue's targets, each with the worst measured row it covers. */
export function evaluateTargets(rows: BenchRow[]): BenchResult['targets'] {
  const out: BenchResult['targets'] = [];
  const g = rows.filter((r) => r.op === 'gemm' && r.dtype === 'f32' && r.d === 4096 && (r.n ?? 0) >= 128 && r.vsReference !== null);
  const w1 = worst(g, (r) => r.vsReference!, 'min');
  out.push({ target: 'f32 base GEMM >= 1.0x OpenBLAS at d=4096, n>=128', measured: w1 ? `${w1.vsReference!.toFixed(2)}x (worst, n=${w1.n})` : 'not measured', met: w1 ? w1.vsReference! >= 1 : null });
  const f = rows.filter((r) => r.op === 'forward' && (r.n ?? 0) >= 128 && (r.r ?? 0) <= 64 && r.vsBase !== null);
  const w2 = worst(f, (r) => r.vsBase!, 'max');
  out.push({ target: 'LoRA forward <= 1.05x own base GEMM at n>=128, r<=64', measured: w2 ? `${w2.vsBase!.toFixed(3)}x (worst, ${w2.dtype} d=${w2.d} r=${w2.r} n=${w2.n})` : 'not measured', met: w2 ? w2.vsBase! <= 1.05 : null });
  const b = rows.filter((r) => r.op === 'gemm' && r.dtype === 'bf16' && r.peakKind === 'amx');
  const w3 = worst(b, (r) => r.peakShare, 'max');
  const dp = worst(rows.filter((r) => r.op === 'gemm' && r.dtype === 'bf16' && r.peakKind === 'dpbf16'), (r) => r.peakShare, 'max');
  const noAmx = dp ? `AMX not in use (avx512bf16: ${(dp.peakShare * 100).toFixed(1)}% of the vdpbf16ps peak, best, d=${dp.d} n=${dp.n})` : 'no AMX on this CPU';
  out.push({ target: 'bf16 GEMM >= 50% of AMX peak', measured: w3 ? `${(w3.peakShare * 100).toFixed(1)}% (best, d=${w3.d} n=${w3.n})` : noAmx, met: w3 ? w3.peakShare >= 0.5 : null });
  // Bandwidth targets only count rows whose W does not fit in the last-level cache.
  const none = (all: BenchRow[]) => (all.length ? 'not measurable here: every W measured fits in the last-level cache' : 'not measured');
  const mAll = rows.filter((r) => r.op === 'merge');
  const w4 = worst(mAll.filter((r) => !r.wInCache), (r) => r.peakShare, 'min');
  out.push({ target: 'merge >= 80% of copy bandwidth (W larger than the LLC)', measured: w4 ? `${(w4.peakShare * 100).toFixed(1)}% (worst, ${w4.dtype} d=${w4.d} r=${w4.r})` : none(mAll), met: w4 ? w4.peakShare >= 0.8 : null });
  const ex = worst(rows.filter((r) => r.op === 'exact' && r.vsReference !== null), (r) => r.vsReference!, 'min');
  out.push({ target: "exact merge/unmerge >= 80% of the speed of today's (peft) merge", measured: ex ? `${(ex.vsReference! * 100).toFixed(0)}% (worst, ${ex.dtype} d=${ex.d} r=${ex.r})` : 'not measured', met: ex ? ex.vsReference! >= 0.8 : null });
  const d1All = rows.filter((r) => r.op === 'forward' && r.n === 1);
  const w5 = worst(d1All.filter((r) => !r.wInCache), (r) => r.peakShare, 'min');
  out.push({ target: 'n=1 forward >= 80% of read bandwidth over W (W larger than the LLC)', measured: w5 ? `${(w5.peakShare * 100).toFixed(1)}% (worst, ${w5.dtype} d=${w5.d} r=${w5.r})` : none(d1All), met: w5 ? w5.peakShare >= 0.8 : null });
  return out;
}

/** The timed kernel families of the reference, fastest first (empty when one was named). */
function coretypeTimes(t: OpenblasRef['coretypeTimes']): string {
  if (!t) return '';
  const ranked = Object.entries(t.ms).sort((a, b) => a[1] - b[1]).map(([c, ms]) => `${c} ${ms.toFixed(2)}`).join(', ');
  return `, the fastest at m ${t.shape[0]}, n = k ${t.shape[1]}: ${ranked} ms`;
}

/** The result as a plain-text table. */
export function formatTable(res: BenchResult): string {
  if (res === null || typeof res !== 'object' || !Array.isArray((res as { rows?: unknown }).rows))
    throw new LoraTypeError('res: expected the result of bench() ({ rows, ... })');
  const head = ['op', 'dtype', 'd', 'r', 'n', 'best ms', 'median ms', 'rate', '% peak', 'vs ref', 'vs base'];
  const body = res.rows.map((r) => [
    r.op,
    r.dtype,
    String(r.d),
    r.r === null ? '-' : String(r.r),
    r.n === null ? '-' : String(r.n),
    r.ms.toFixed(3),
    r.medianMs.toFixed(3),
    r.gbs !== null ? `${r.gbs.toFixed(1)} GB/s` : `${r.gflops!.toFixed(1)} GFLOP/s`,
    `${(r.peakShare * 100).toFixed(0)}% ${r.peakKind}${r.wInCache && (r.peakKind === 'read' || r.peakKind === 'copy') ? '*' : ''}`,
    r.vsReference === null ? '-' : `${r.vsReference.toFixed(2)}x`,
    r.vsBase === null ? '-' : `${r.vsBase.toFixed(3)}x`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 5 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  const p = res.peaks;
  const ref = res.reference && 'library' in res.reference
    ? `OpenBLAS ${res.reference.library} core ${res.reference.core} (OPENBLAS_CORETYPE=${res.reference.coretype ?? 'unset'}${coretypeTimes(res.reference.coretypeTimes)}), max rel err ${res.reference.maxRelErr.toExponential(1)}`
    : res.reference ? `none: ${res.reference.unavailable}` : 'not run';
  return [
    `lorakit bench  ${res.date}  ${res.machine.cpuModel} (${res.machine.logicalCpus} CPUs, ${res.machine.isa.join(' ')})`,
    `cpu path ${res.cpuPath} (available: ${res.cpuPaths.join(', ')}), ${res.threads} threads`,
    `measured peaks: FMA f32 ${p.fmaGflops.toFixed(1)} GFLOP/s${p.amxGflops ? `, AMX bf16 ${p.amxGflops.toFixed(1)} GFLOP/s` : ''}${p.bf16DotGflops ? `, AVX512-BF16 vdpbf16ps ${p.bf16DotGflops.toFixed(1)} GFLOP/s` : ''}, copy ${p.copyGBs.toFixed(1)} GB/s (read+write), read ${p.readGBs.toFixed(1)} GB/s`,
    `reference: ${ref}`,
    ...(p.gemmBlocks ? [`gemm blocks: mc ${p.gemmBlocks.mc}, kc ${p.gemmBlocks.kc}, nc ${p.gemmBlocks.nc} (from L1d ${(p.caches.l1dBytes / 1024).toFixed(0)} KiB, L2 ${(p.caches.l2Bytes / 1024).toFixed(0)} KiB per core: ${p.gemmBlocks.source})${gemmWInPlaceLabel(p.gemmBlocks)}`] : []),
    `last-level cache: ${res.machine.l3Bytes === null ? 'unknown' : `${(res.machine.l3Bytes / 2 ** 20).toFixed(0)} MiB${res.machine.l3Source ? ` (${res.machine.l3Source})` : ''}`} (* = W fits in it: a bandwidth share above 100% is cache, not DRAM)`,
    '',
    line(head),
    line(widths.map((w) => '-'.repeat(w))),
    ...body.map(line),
    '',
    'targets:',
    ...res.targets.map((t) => `  [${t.met === null ? 'n/a' : t.met ? 'met' : 'MISSED'}] ${t.target}: ${t.measured}`),
    res.file ? `\nresults: ${res.file}` : '',
  ].join('\n');
}
