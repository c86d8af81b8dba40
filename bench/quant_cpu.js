#!/usr/bin/env node
/**
 * LoRA over a quantized base on the CPU (native/cpu/quant_*.cc), in one run:
 *  - bytes held per weight for each format (quantLayout(spec).nbytes / (d_out·d_in));
 *  - n = 1 (decode): the forward's time over nf4, q4_0 (and the other formats), x in f32 and in
 *    bf16, and its effective read rate, quantized bytes / time, against the read bandwidth of a
 *    buffer of the same size measured between the rounds (measurePeaks); once at d_out = d_in = d
 *    and once with a taller W (--big-rows) whose bytes do not fit in the last-level cache;
 *  - n = 128 and 512: the forward's time against loraForward over the same layer with a bf16 W
 *    (x in f32 and in bf16), and the backward's dx against linearBackward with the bf16 W.
 * Every op of a row is timed in alternation with the others (best and median of --rounds), so all
 * see the same machine load. Writes bench/results/quant-cpu-<date>-<cpu>.txt.
 *
 *   node bench/quant_cpu.js [--d 4096] [--r 16] [--rounds 9] [--big-rows 131072] [--threads 0] [--decode-only]
 *     [--formats q4_k,q6_k]
 * --decode-only skips n = 128 and 512; --formats limits both n = 1 passes to those formats. Under LORAKIT_CPU_PATH (e.g. avx2 on an AVX-512 machine)
 * the results file's name ends in that path.
 */
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const lk = require('../dist');
const { call } = require('../dist/native');
const { machineInfo } = require('../dist/bench/machine');

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}
const D = Number(arg('d', 4096));
const R = Number(arg('r', 16));
const ROUNDS = Number(arg('rounds', 9));
const BIG_ROWS = Number(arg('big-rows', 131072));
const threads = Number(arg('threads', 0));
const DECODE_ONLY = process.argv.includes('--decode-only');
const ONLY = arg('formats', null)?.split(',') ?? null;
if (threads > 0) lk.setNumThreads(threads);

function gaussian(n, seed, std) {
  return new lk.Rng(seed).fillNormal(new Float32Array(n), 0, std);
}
const now = () => Number(process.hrtime.bigint()) / 1e6;
function stats(t) {
  const s = [...t].sort((a, b) => a - b);
  return { best: s[0], median: s[s.length >> 1] };
}
/** Times each fn of ops in alternation, ROUNDS rounds after one warm-up; {name: {best, median}} in ms. */
function race(ops) {
  const t = Object.fromEntries(Object.keys(ops).map((k) => [k, []]));
  for (let round = -1; round < ROUNDS; round++)
    for (const [k, fn] of Object.entries(ops)) {
      const t0 = now();
      fn();
      if (round >= 0) t[k].push(now() - t0);
    }
  return Object.fromEntries(Object.entries(t).map(([k, v]) => [k, stats(v)]));
}
const ms = (s) => `${s.best.toFixed(3)} ms (median ${s.median.toFixed(3)})`;

function spec(format, rows, cols) {
  const blockSize = format === 'int8' ? cols : format === 'q4_k' || format === 'q6_k' ? 256 : format === 'q8_0' || format === 'q4_0' ? 32 : 64;
  return { format, rows, cols, blockSize, doubleQuant: false };
}
/** A quantized [rows, cols] weight: {q (i32 tensor), spec, nbytes}. */
function quantized(format, rows, cols, w) {
  const s = spec(format, rows, cols);
  const L = call((b) => b.quantLayout(s));
  const q = lk.Tensor.zeros([L.nbytes / 4], { dtype: 'i32' });
  const wt = lk.Tensor.from(w, [rows, cols]);
  call((b) => b.quantize(wt.handle, s, q.handle));
  wt.dispose();
  return { q, spec: s, nbytes: L.nbytes };
}

/**
 * A [rows, cols] weight (rows a multiple of D) whose sections repeat those of the d × d one: the
 * bytes of a weight too large to quantize here from f32 (int8, nf4/fp4 without double quant, ggml).
 */
function tiled(format, rows, cols) {
  const small = quantized(format, D, cols, w);
  const s = spec(format, rows, cols);
  const L = call((b) => b.quantLayout(s));
  const src = new Uint8Array(small.q.toInt32Array().buffer);
  const big = new Uint8Array(L.nbytes);
  const copy = (from, len, to, total) => {
    for (let o = 0; o < total; o += len) big.set(src.subarray(from, from + Math.min(len, total - o)), to + o);
  };
  const Ls = call((b) => b.quantLayout(small.spec));
  if (Ls.dataOffset > 0) copy(0, (Ls.nblocks * 4), 0, L.nblocks * 4); // row scales / absmax
  copy(Ls.dataOffset, Ls.dataBytes, L.dataOffset, L.dataBytes);
  small.q.dispose();
  return { q: lk.Tensor.from(new Int32Array(big.buffer), [L.nbytes / 4], { dtype: 'i32' }), spec: s, nbytes: L.nbytes };
}

const lines = [];
const out = (s) => {
  lines.push(s);
  console.log(s);
};
const m = machineInfo();
const info = lk.backendInfo();
out(`# quantized-base CPU benchmark, ${new Date().toISOString()}`);
out(`machine: ${m.cpuModel} (${m.vendor}), ${m.logicalCpus} logical CPUs, ${m.platform}, isa ${m.isa.join(' ')}; cpu path ${info.cpuPath}, ${info.threads} threads`);
out(`load average at start (uptime; the machine is shared): ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}`);
out(`command: node bench/quant_cpu.js ${process.argv.slice(2).join(' ')}`);
out(`d_in = d_out = ${D}, r = ${R}, rounds ${ROUNDS}`);

const FORMATS = ['int8', 'nf4', 'fp4', 'q8_0', 'q4_0', 'q4_k', 'q6_k'];
const w = gaussian(D * D, 1, 0.02);
out('\n## bytes held per weight (data + scales)');
for (const f of FORMATS) {
  const L = call((b) => b.quantLayout(spec(f, D, D)));
  const Ldq = f === 'nf4' || f === 'fp4' ? call((b) => b.quantLayout({ ...spec(f, D, D), doubleQuant: true })) : null;
  out(`${f.padEnd(5)} ${(L.nbytes / (D * D)).toFixed(4)}${Ldq ? ` (double quant ${(Ldq.nbytes / (D * D)).toFixed(4)})` : ''}`);
}

function adapters(rows, cols, dtype) {
  const A = lk.Tensor.from(gaussian(R * cols, 2, 0.02), [R, cols], { dtype });
  const B = lk.Tensor.from(gaussian(rows * R, 3, 0.02), [rows, R], { dtype });
  return [[A.handle, B.handle, 2, null]];
}

/**
 * n = 1 over each format with f32 and bf16 activations (bf16: deq(W) rounded to bf16, the
 * vdpbf16ps kernels where the path has them), timed in alternation (best and median of --rounds);
 * the read bandwidth of a buffer of the same size is measured between the rounds (every third, and
 * once after the last) and its best is the reference: on a machine shared with other work, a
 * reference taken once could land in a busy moment that the kernel's best round missed.
 */
function decode(rows, label, formats) {
  out(`\n## n = 1 forward, W [${rows}, ${D}] (${label}): effective read rate of the quantized bytes vs the measured read bandwidth of a same-sized buffer`);
  const xs = {};
  for (const xdt of ['f32', 'bf16']) {
    const x = lk.Tensor.from(gaussian(D, 5, 1), [1, D], { dtype: xdt });
    xs[xdt] = { x, y: lk.Tensor.zeros([1, rows], { dtype: xdt }), ad: adapters(rows, D, xdt) };
  }
  for (const f of formats) {
    const Q = rows === D ? quantized(f, rows, D, w) : tiled(f, rows, D);
    const reads = [];
    const times = Object.fromEntries(Object.keys(xs).map((k) => [k, []]));
    for (let round = -1; round < ROUNDS; round++) {
      if (round >= 0 && round % 3 === 0) reads.push(call((b) => b.measurePeaks(Q.nbytes)).readGBs);
      for (const [xdt, { x, y, ad }] of Object.entries(xs)) {
        const t0 = now();
        call((b) => b.quantLoraForward(x.handle, Q.q.handle, Q.spec, null, ad, y.handle));
        if (round >= 0) times[xdt].push(now() - t0);
      }
    }
    reads.push(call((b) => b.measurePeaks(Q.nbytes)).readGBs);
    const read = Math.max(...reads);
    for (const xdt of Object.keys(xs)) {
      const t = stats(times[xdt]);
      const gbs = Q.nbytes / (t.best * 1e6);
      out(`${f.padEnd(5)} x ${xdt.padEnd(4)} ${(Q.nbytes / 1e6).toFixed(1)} MB: ${ms(t)}, ${gbs.toFixed(1)} GB/s = ${((100 * gbs) / read).toFixed(0)}% of ${read.toFixed(1)} GB/s read (best of ${reads.length}: ${reads.map((v) => v.toFixed(0)).join(' ')})`);
    }
    Q.q.dispose();
  }
  for (const { x, y } of Object.values(xs)) [x, y].forEach((t) => t.dispose());
}
// The W beyond the LLC first: the headline figure, measured while the machine is as quiet as it was at the start.
if (BIG_ROWS > 0) decode(BIG_ROWS, 'larger than the last-level cache', ONLY ?? ['nf4', 'q4_0']);
decode(D, 'd × d', ONLY ?? ['nf4', 'q4_0', 'int8', 'q8_0', 'fp4', 'q4_k', 'q6_k']);

if (!DECODE_ONLY) out(`\n## n = 128 and 512: forward and backward dx vs the same layer with a bf16 W (loraForward / linearBackward)`);
const Wbf = lk.Tensor.from(w, [D, D], { dtype: 'bf16' });
for (const n of DECODE_ONLY ? [] : [128, 512]) {
  for (const xdt of ['f32', 'bf16']) {
    const x = lk.Tensor.from(gaussian(n * D, 6, 1), [n, D], { dtype: xdt });
    const y = lk.Tensor.zeros([n, D], { dtype: xdt });
    const ad = adapters(D, D, xdt);
    const ops = { bf16: () => call((b) => b.loraForward(x.handle, Wbf.handle, null, false, ad, y.handle)) };
    const Qs = (ONLY ?? ['nf4', 'q4_0', 'int8']).map((f) => quantized(f, D, D, w));
    for (const Q of Qs) ops[Q.spec.format] = () => call((b) => b.quantLoraForward(x.handle, Q.q.handle, Q.spec, null, ad, y.handle));
    const dy = lk.Tensor.from(gaussian(n * D, 7, 1), [n, D], { dtype: xdt });
    const dx = lk.Tensor.zeros([n, D], { dtype: xdt });
    ops['bf16 dx'] = () => call((b) => b.linearBackward(dy.handle, Wbf.handle, false, [], dx.handle));
    for (const Q of Qs) ops[`${Q.spec.format} dx`] = () => call((b) => b.quantLinearBackward(dy.handle, Q.q.handle, Q.spec, [], dx.handle));
    const t = race(ops);
    out(`n = ${n}, x ${xdt}: forward bf16 W ${ms(t.bf16)}`);
    for (const Q of Qs) out(`  ${Q.spec.format.padEnd(5)} forward ${ms(t[Q.spec.format])} = ${(t[Q.spec.format].best / t.bf16.best).toFixed(2)}x bf16`);
    out(`  backward dx bf16 W ${ms(t['bf16 dx'])}`);
    for (const Q of Qs) out(`  ${Q.spec.format.padEnd(5)} dx ${ms(t[`${Q.spec.format} dx`])} = ${(t[`${Q.spec.format} dx`].best / t['bf16 dx'].best).toFixed(2)}x bf16`);
    for (const Q of Qs) Q.q.dispose();
    for (const tt of [x, y, dy, dx]) tt.dispose();
  }
}
out(`\nload average at end: ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}`);

const dir = path.join(__dirname, 'results');
fs.mkdirSync(dir, { recursive: true });
const cpu = m.cpuModel.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '').toLowerCase();
const forced = process.env.LORAKIT_CPU_PATH ? `-${process.env.LORAKIT_CPU_PATH}` : '';
// A second run on one day gets the time in its name: results files are kept, never overwritten.
let file = path.join(dir, `quant-cpu-${new Date().toISOString().slice(0, 10)}-${cpu}${forced}.txt`);
if (fs.existsSync(file)) file = file.replace(/\.txt$/, `-${new Date().toISOString().slice(11, 16).replace(':', '')}.txt`);
const tmp = `${file}.tmp`;
fs.writeFileSync(tmp, lines.join('\n') + '\n');
fs.renameSync(tmp, file);
console.log(`wrote ${path.relative(process.cwd(), file)}`);
