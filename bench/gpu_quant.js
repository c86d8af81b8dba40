#!/usr/bin/env node
// GPU benchmark of quantized bases (native/cuda/quant*.cu) against the same layer on a bf16 base,
// in one run: bf16 activations, d_in = 4096, d_out ∈ {4096, 14336}, one adapter r = 16.
//   forward: quantLoraForward over nf4 (and int8, q4_0) vs loraForward over the bf16 W, n ∈ {1, 16, 512, 4096}
//   QLoRA step: forward (u kept) + backward (dx, dA, dB) on nf4 vs the same on bf16
//   bytes per weight of every format (quantLayout: values, scales, padding)
// Times are device-event medians of 5 loops over 8 rotating weight sets (so W is not served from
// L2). Writes gpu-quant-<date>.{md,json} into --out (default bench/results).
// <f>_sm90 / <f>_chunked: the nf4 (and fp4) forward forced through each path for n > 16
// (LORAKIT_QUANT_GEMM: the sm_90 kernel with W decoded into wgmma's register operand, or the chunked
// dequantise + cuBLASLt GEMMs). --dtype f16 runs everything on f16 activations and weights;
// --fwd-only skips the training steps.
//   node bench/gpu_quant.js [--quick] [--ns 512,4096] [--formats nf4,fp4,int8,q4_0] [--dtype f16] [--fwd-only] [--out DIR]
'use strict';
const fs = require('fs');
const path = require('path');
const lk = require('../dist');
const { call } = require('../dist/native');
const { Tensor, cuda } = lk;
const { randn, dev: devAs } = require('./gpu_data');

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const outDir = args.includes('--out') ? args[args.indexOf('--out') + 1] : path.join(__dirname, 'results');
const D_IN = 4096, R = 16, SCALE = 2, SETS = 8;
const D_OUT = quick ? [4096] : [4096, 14336];
const listArg = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1].split(',') : fallback);
const NS = listArg('--ns', ['1', '16', '512', '4096']).map(Number);
const FORMATS = listArg('--formats', ['nf4', 'int8', 'q4_0']);
const DT = listArg('--dtype', ['bf16'])[0];
const FWD_ONLY = args.includes('--fwd-only');
// --paths sm90,chunked[,sm90@128/1 …]: sm90@TN/C forces the sm_90 kernel's x tile and cluster size.
const PATHS = listArg('--paths', ['sm90', 'chunked']);
function withPath(name, fn) {
  const [path, shape] = name.split('@');
  const [tn, cluster] = shape ? shape.split('/') : [];
  process.env.LORAKIT_QUANT_GEMM = path;
  if (tn) process.env.LORAKIT_SM90_QUANT_TN = tn;
  if (cluster) process.env.LORAKIT_SM90_QUANT_CLUSTER = cluster;
  try {
    return fn();
  } finally {
    for (const v of ['LORAKIT_QUANT_GEMM', 'LORAKIT_SM90_QUANT_TN', 'LORAKIT_SM90_QUANT_CLUSTER']) delete process.env[v];
  }
}
if (!FORMATS.includes('nf4')) throw new Error('--formats must include nf4 (the training-step rows use it)');

const dev = (data, shape) => devAs(data, shape, DT);

function timed(fn, sets, targetMs = 20) {
  for (const s of sets.slice(0, 2)) fn(s);
  cuda.synchronize();
  const per = cuda.timeMs(() => sets.forEach(fn)) / sets.length;
  const iters = Math.max(sets.length, Math.min(400, Math.floor(targetMs / Math.max(per, 1e-3))));
  const out = [];
  for (let rep = 0; rep < 5; rep++) out.push((cuda.timeMs(() => { for (let i = 0; i < iters; i++) fn(sets[i % sets.length]); }) * 1000) / iters);
  out.sort((a, b) => a - b);
  return out[2];
}

const spec = (format, rows, cols) => ({ format, rows, cols, blockSize: format === 'int8' ? cols : { q4_0: 32, q8_0: 32, q4_k: 256, q6_k: 256 }[format] || 64, doubleQuant: false });

function quantize(w, s) {
  const q = Tensor.zeros([call((b) => b.quantLayout(s)).nbytes / 4], { dtype: 'i32', device: 'cuda' });
  call((b) => b.quantize(w.handle, s, q.handle));
  return q;
}

function main() {
  if (!cuda.isAvailable()) throw new Error('no usable CUDA device: ' + JSON.stringify(lk.backendInfo()));
  const rows = [];
  const bytes = [];
  for (const format of ['int8', 'nf4', 'fp4', 'q8_0', 'q4_0', 'q4_k', 'q6_k']) {
    for (const dq of format === 'nf4' || format === 'fp4' ? [false, true] : [false]) {
      const s = { ...spec(format, 4096, 4096), doubleQuant: dq };
      bytes.push({ format: format + (dq ? '+dq' : ''), bytes_per_weight: call((b) => b.quantLayout(s)).nbytes / (4096 * 4096) });
    }
  }
  let seed = 1;
  for (const dOut of D_OUT) {
    const Ws = Array.from({ length: SETS }, () => dev(randn(dOut * D_IN, seed++, 0.02), [dOut, D_IN]));
    const formats = FORMATS;
    const Q = {};
    for (const f of formats) Q[f] = Ws.map((W) => quantize(W, spec(f, dOut, D_IN)));
    const A = dev(randn(R * D_IN, seed++, 0.02), [R, D_IN]);
    const B = dev(randn(dOut * R, seed++, 0.02), [dOut, R]);
    const idx = Array.from({ length: SETS }, (_, i) => i);
    for (const n of NS) {
      const x = dev(randn(n * D_IN, seed++, 1), [n, D_IN]);
      const dy = dev(randn(n * dOut, seed++, 1), [n, dOut]);
      const y = Tensor.empty([n, dOut], { dtype: DT, device: 'cuda' });
      const u = Tensor.empty([n, R], { dtype: DT, device: 'cuda' });
      const dx = Tensor.empty([n, D_IN], { dtype: DT, device: 'cuda' });
      const dA = Tensor.empty([R, D_IN], { dtype: DT, device: 'cuda' });
      const dB = Tensor.empty([dOut, R], { dtype: DT, device: 'cuda' });
      const ad = [[A.handle, B.handle, SCALE, null]];
      const adU = [[A.handle, B.handle, SCALE, u.handle]];
      const terms = [{ xa: x.handle, u: u.handle, A: A.handle, B: B.handle, scale: SCALE, p: 0, seed: 0, stream: 0, dA: dA.handle, dB: dB.handle }];
      const row = { d_out: dOut, n };
      row.bf16_fwd_us = timed((i) => call((b) => b.loraForward(x.handle, Ws[i].handle, null, false, ad, y.handle)), idx);
      for (const f of formats) {
        const s = spec(f, dOut, D_IN);
        row[`${f}_fwd_us`] = timed((i) => call((b) => b.quantLoraForward(x.handle, Q[f][i].handle, s, null, ad, y.handle)), idx);
      }
      if (n > 16) {
        for (const f of formats.filter((g) => g === 'nf4' || g === 'fp4')) {
          const s = spec(f, dOut, D_IN);
          for (const path of PATHS)
            row[`${f}_${path}_fwd_us`] = withPath(path, () => timed((i) => call((b) => b.quantLoraForward(x.handle, Q[f][i].handle, s, null, ad, y.handle)), idx));
        }
      }
      if (FWD_ONLY) {
        rows.push(row);
        console.error(`d_out=${dOut} n=${n}: ` + Object.entries(row).filter(([k]) => k.endsWith('_us')).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', '));
        [x, dy, y, u, dx, dA, dB].forEach((t) => t.dispose());
        continue;
      }
      row.bf16_step_us = timed((i) => call((b) => {
        b.loraForward(x.handle, Ws[i].handle, null, false, adU, y.handle);
        b.linearBackward(dy.handle, Ws[i].handle, false, terms, dx.handle);
      }), idx);
      const s4 = spec('nf4', dOut, D_IN);
      row.nf4_step_us = timed((i) => call((b) => {
        b.quantLoraForward(x.handle, Q.nf4[i].handle, s4, null, adU, y.handle);
        b.quantLinearBackward(dy.handle, Q.nf4[i].handle, s4, terms, dx.handle);
      }), idx);
      rows.push(row);
      console.error(`d_out=${dOut} n=${n}: ` + Object.entries(row).filter(([k]) => k.endsWith('_us')).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', '));
      [x, dy, y, u, dx, dA, dB].forEach((t) => t.dispose());
    }
    [...Ws, A, B, ...formats.flatMap((f) => Q[f])].forEach((t) => t.dispose());
    cuda.emptyCache();
  }
  report(rows, bytes);
}

const fmt = (v, d = 1) => (v === undefined || Number.isNaN(v) ? '-' : v.toFixed(d));

function report(rows, bytes) {
  const info = lk.backendInfo();
  const date = new Date().toISOString();
  const lines = [`# lorakit GPU benchmark: quantized bases`, '', `- date: ${date}`, `- GPU: ${info.cudaDevice}`,
    `- command: \`node bench/gpu_quant.js ${args.join(' ')}\``,
    `- ${DT} activations and weights, d_in = ${D_IN}, one adapter r = ${R}; µs per call (device-event medians, ${SETS} rotating weight sets)`, '',
    '## forward: quantLoraForward vs loraForward over the bf16 W', '',
    '| d_out | n | bf16 | nf4 | nf4/bf16 | nf4 sm90 | sm90/bf16 | nf4 chunked | chunked/bf16 | int8 | int8/bf16 | q4_0 | q4_0/bf16 |', '|---|---|---|---|---|---|---|---|---|---|---|---|---|'];
  for (const r of rows)
    lines.push(`| ${r.d_out} | ${r.n} | ${fmt(r.bf16_fwd_us)} | ${fmt(r.nf4_fwd_us)} | ${fmt(r.nf4_fwd_us / r.bf16_fwd_us, 3)} | ${fmt(r.nf4_sm90_fwd_us)} | ${fmt(r.nf4_sm90_fwd_us / r.bf16_fwd_us, 3)} | ${fmt(r.nf4_chunked_fwd_us)} | ${fmt(r.nf4_chunked_fwd_us / r.bf16_fwd_us, 3)} | ${fmt(r.int8_fwd_us)} | ${fmt(r.int8_fwd_us / r.bf16_fwd_us, 3)} | ${fmt(r.q4_0_fwd_us)} | ${fmt(r.q4_0_fwd_us / r.bf16_fwd_us, 3)} |`);
  const four = ['nf4', 'fp4'].filter((f) => FORMATS.includes(f));
  lines.push('', '## 4-bit forward by path (n > 16; LORAKIT_QUANT_GEMM forces each)', '',
    '| d_out | n | bf16 | ' + four.map((f) => PATHS.map((q) => `${f} ${q} | /bf16`).join(' | ')).join(' | ') + ' |',
    '|---|---|---|' + four.map(() => PATHS.map(() => '---|---|').join('')).join(''));
  for (const r of rows.filter((q) => q.n > 16))
    lines.push(`| ${r.d_out} | ${r.n} | ${fmt(r.bf16_fwd_us)} | ` + four.map((f) => PATHS.map((q) => `${fmt(r[`${f}_${q}_fwd_us`])} | ${fmt(r[`${f}_${q}_fwd_us`] / r.bf16_fwd_us, 3)}`).join(' | ')).join(' | ') + ' |');
  if (!FWD_ONLY) lines.push('', '## QLoRA training step: forward (u kept) + backward (dx, dA, dB)', '', '| d_out | n | bf16 step | nf4 step | nf4/bf16 |', '|---|---|---|---|---|');
  if (!FWD_ONLY) for (const r of rows) lines.push(`| ${r.d_out} | ${r.n} | ${fmt(r.bf16_step_us)} | ${fmt(r.nf4_step_us)} | ${fmt(r.nf4_step_us / r.bf16_step_us, 3)} |`);
  lines.push('', '## bytes held per weight (4096 × 4096; quantLayout nbytes, scales and alignment included)', '', '| format | bytes/weight |', '|---|---|');
  for (const b of bytes) lines.push(`| ${b.format} | ${b.bytes_per_weight.toFixed(4)} |`);
  const md = lines.join('\n') + '\n';
  console.log(md);
  fs.mkdirSync(outDir, { recursive: true });
  const stamp = date.slice(0, 19).replace(/[:T]/g, '-');
  for (const [ext, body] of [['md', md], ['json', JSON.stringify({ date, gpu: info.cudaDevice, rows, bytes }, null, 1)]]) {
    const file = path.join(outDir, `gpu-quant-${stamp}.${ext}`);
    fs.writeFileSync(file + '.tmp', body);
    fs.renameSync(file + '.tmp', file);
  }
}

main();
