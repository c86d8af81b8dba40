#!/usr/bin/env node
// GPU benchmark: lorakit (cuda) against the bare cuBLASLt base GEMM and against peft 0.21 +
// PyTorch on the same GPU in the same run (bench/gpu_peft.py), bf16, d_in = 4096,
// d_out ∈ {4096, 14336}, r ∈ {8, 16, 64}, n ∈ {1, 16, 512, 4096, 16384}: forward, forward +
// backward, merge, exact merge and hot-swap (against peft unmerge + merge), and a 4-adapter mixed
// batch (one adapter per row, round-robin), and DoRA against plain LoRA (bench/gpu_dora.js). Times are
// device-event medians over loops of JS calls, with 4 rotating weight sets so W does not sit in L2. Writes bench/results/gpu-<date>.{json,md}.
//   node bench/gpu.js [--quick] [--no-peft] [--dora (the DoRA rows only)] [--out DIR]
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');
const lk = require('../dist');
const { Tensor, LoraLinear, cuda, kernels } = lk;

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const noPeft = args.includes('--no-peft');
const doraOnly = args.includes('--dora');
const outDir = args.includes('--out') ? args[args.indexOf('--out') + 1] : path.join(__dirname, 'results');
const CFG = quick
  ? { d_in: 4096, d_out: [4096], r: [16], n: [1, 4096], mixed_n: [512], mixed_r: 16 }
  : { d_in: 4096, d_out: [4096, 14336], r: [8, 16, 64], n: [1, 16, 512, 4096, 16384], mixed_n: [16, 512, 4096], mixed_r: 16 };
// --merge-only: only the merge, exact merge and swap rows (peft's merge and swap in the same run).
if (args.includes('--merge-only')) Object.assign(CFG, { n: [], mixed_n: [] });
const SETS = 4;

const { randn, dev } = require('./gpu_data');
const { doraRows, doraReport, DORA_R, DORA_N } = require('./gpu_dora');
CFG.dora_r = DORA_R;
CFG.dora_n = DORA_N;
CFG.dora_only = doraOnly;

// Median of 5 device-timed loops of fn(set), in µs per call.
function timed(fn, sets, targetMs = 25) {
  for (const s of sets.slice(0, 2)) fn(s);
  cuda.synchronize();
  const per = cuda.timeMs(() => sets.forEach(fn)) / sets.length;
  const iters = Math.max(sets.length, Math.min(400, Math.floor(targetMs / Math.max(per, 1e-3))));
  const out = [];
  for (let rep = 0; rep < 5; rep++) out.push((cuda.timeMs(() => { for (let i = 0; i < iters; i++) fn(sets[i % sets.length]); }) * 1000) / iters);
  out.sort((a, b) => a - b);
  return out[2];
}

function runPeft() {
  if (noPeft) return null;
  const r = spawnSync('python3', [path.join(__dirname, 'gpu_peft.py'), JSON.stringify(CFG)], { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) {
    console.error('peft benchmark failed:\n' + r.stderr);
    return null;
  }
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

function main() {
  if (!cuda.isAvailable()) throw new Error('no usable CUDA device: ' + JSON.stringify(lk.backendInfo()));
  const peft = runPeft();
  const rows = [];
  let seed = 1;
  if (doraOnly) {
    report(doraRows(CFG, timed, seed), peft, null);
    return;
  }
  for (const dOut of CFG.d_out) {
    const Ws = Array.from({ length: SETS }, () => dev(randn(dOut * CFG.d_in, seed++, 0.02), [dOut, CFG.d_in]));
    for (const n of CFG.n) {
      const x = dev(randn(n * CFG.d_in, seed++, 1), [n, CFG.d_in]);
      const dy = dev(randn(n * dOut, seed++, 1), [n, dOut]);
      const y = Tensor.empty([n, dOut], { dtype: 'bf16', device: 'cuda' });
      const dx = Tensor.empty([n, CFG.d_in], { dtype: 'bf16', device: 'cuda' });
      const baseFwd = timed((W) => cuda.baseGemm(x, W, y), Ws);
      const baseFwdDx = timed((W) => { cuda.baseGemm(x, W, y); cuda.baseGemm(dy, W, dx, true); }, Ws);
      for (const r of CFG.r) {
        const layers = Ws.map((W) => new LoraLinear({ weight: W }).addAdapter('default', { r, loraAlpha: 2 * r, dtype: 'bf16', initLoraWeights: false, seed: 3 }));
        layers.forEach((l) => l.eval());
        const fwd = timed((l) => l.forward(x).dispose(), layers);
        layers.forEach((l) => l.train());
        const mallocs0 = cuda.memoryStats().deviceMallocs;
        const fwdBwd = timed((l) => {
          l.forward(x).dispose();
          const g = l.backward(dy);
          g.dx.dispose();
          for (const a of g.grads.values()) { a.loraA.dispose(); a.loraB.dispose(); }
        }, layers);
        layers.forEach((l) => l.dispose());
        rows.push({ d_out: dOut, n, r, base_fwd_us: baseFwd, base_fwd_dx_us: baseFwdDx, fwd_us: fwd, fwdbwd_us: fwdBwd });
        // cudaMalloc calls during the fwd+bwd loops (the allocator's misses): a row that keeps missing pays for it.
        const mallocs = cuda.memoryStats().deviceMallocs - mallocs0;
        console.error(`d_out=${dOut} n=${n} r=${r}: base ${baseFwd.toFixed(1)} fwd ${fwd.toFixed(1)} base+dx ${baseFwdDx.toFixed(1)} fwd+bwd ${fwdBwd.toFixed(1)} us (cudaMalloc calls in its loops: ${mallocs})`);
      }
      [x, dy, y, dx].forEach((t) => t.dispose());
    }
    // Mixed batches: 4 adapters, rows assigned round-robin, against the base GEMM on the same rows.
    for (const n of CFG.mixed_n) {
      const r = CFG.mixed_r;
      const names = ['a0', 'a1', 'a2', 'a3'];
      const x = dev(randn(n * CFG.d_in, seed++, 1), [n, CFG.d_in]);
      const y = Tensor.empty([n, dOut], { dtype: 'bf16', device: 'cuda' });
      const rowNames = Array.from({ length: n }, (_, i) => names[i % 4]);
      const layers = Ws.map((W) => {
        const l = new LoraLinear({ weight: W });
        names.forEach((name, i) => l.addAdapter(name, { r, loraAlpha: 2 * r, dtype: 'bf16', initLoraWeights: false, seed: 20 + i }));
        return l.eval();
      });
      const baseFwd = timed((W) => cuda.baseGemm(x, W, y), Ws);
      const mixed = timed((l) => l.forward(x, { adapterNames: rowNames }).dispose(), layers);
      rows.push({ d_out: dOut, n, r, op: 'mixed', base_fwd_us: baseFwd, mixed_us: mixed });
      console.error(`d_out=${dOut} n=${n} mixed r=${r}: base ${baseFwd.toFixed(1)} mixed ${mixed.toFixed(1)} us`);
      layers.forEach((l) => l.dispose());
      [x, y].forEach((t) => t.dispose());
    }
    for (const r of CFG.r) {
      const ad = Ws.map(() => ({ loraA: dev(randn(r * CFG.d_in, seed++, 0.02), [r, CFG.d_in]), loraB: dev(randn(dOut * r, seed++, 0.02), [dOut, r]), scaling: 2 }));
      const calls = [0, 0, 0, 0];
      // Each set alternates merge and unmerge so W stays bounded; each call is one pass over W.
      const merge = timed((i) => { (calls[i]++ & 1 ? kernels.unmergeAdapter : kernels.mergeAdapter)(Ws[i], ad[i]); }, [0, 1, 2, 3]);
      rows.push({ d_out: dOut, r, op: 'merge', merge_us: merge, merge_tbps: (4 * dOut * CFG.d_in) / (merge * 1e-6) / 1e12 });
      ad.forEach((a) => { a.loraA.dispose(); a.loraB.dispose(); });
      rows.push({ d_out: dOut, r, op: 'exact', ...timeExact(Ws, r), merge_us: merge });
    }
    Ws.forEach((W) => W.dispose());
    cuda.emptyCache();
  }
  // Copy bandwidth (read + write), the merge roofline.
  const a = Tensor.empty([1 << 29], { dtype: 'bf16', device: 'cuda' });
  const b = Tensor.empty([1 << 29], { dtype: 'bf16', device: 'cuda' });
  const copyUs = timed(() => b.copyFrom(a), [0], 50);
  const copyTbps = (2 * 2 * (1 << 29)) / (copyUs * 1e-6) / 1e12;
  a.dispose();
  b.dispose();
  rows.push(...doraRows(CFG, timed, seed + 1000));
  report(rows, peft, copyTbps);
}

// Exact merge and hot-swap on layers with adapters a and b (bf16): exact merge/unmerge alternating
// (one pass each), switchMerged a ⇄ b (one pass), and exact unmerge + merge (two passes).
function timeExact(Ws, r) {
  const layers = Ws.map((W) => {
    const l = new LoraLinear({ weight: W });
    for (const [name, seed] of [['a', 31], ['b', 32]]) l.addAdapter(name, { r, loraAlpha: 2 * r, dtype: 'bf16', initLoraWeights: false, seed });
    return l;
  });
  const n = [0, 0, 0, 0];
  const exact = timed((l) => (n[Ws.indexOf(l.weight)]++ & 1 ? l.unmerge() : l.merge({ adapterNames: ['a'] })), layers);
  layers.forEach((l) => { l.unmerge(); l.merge({ adapterNames: ['a'] }); });
  const bits = (layers[0].mergeSideInfoBytes * 8) / layers[0].weight.numel;
  const swap = timed((l) => l.switchMerged([l.mergedAdapters[0] === 'a' ? 'b' : 'a']), layers);
  const unmergeMerge = timed((l) => {
    const next = l.mergedAdapters[0] === 'a' ? 'b' : 'a';
    l.unmerge();
    l.merge({ adapterNames: [next] });
  }, layers);
  layers.forEach((l) => { l.unmerge(); l.dispose(); });
  return { exact_us: exact, swap_us: swap, exact_unmerge_merge_us: unmergeMerge, side_bits: bits };
}

function fmt(v, d = 1) {
  return v === undefined || v === null || Number.isNaN(v) ? '-' : v.toFixed(d);
}

function report(rows, peft, copyTbps) {
  const info = lk.backendInfo();
  const date = new Date().toISOString();
  const cmd = 'node bench/gpu.js ' + args.join(' ');
  const pf = (q) => peft && peft.rows.find((p) => p.d_out === q.d_out && p.r === q.r && (q.op ? p.op === q.op : p.n === q.n && !p.op));
  const lines = [];
  lines.push(`# lorakit GPU benchmark`, '', `- date: ${date}`, `- GPU: ${info.cudaDevice}`, `- command: \`${cmd}\``,
    `- lorakit ${require('../package.json').version}; ${peft ? `peft ${peft.peft}, torch ${peft.torch}` : 'peft not run'}; host ${os.hostname()}`,
    `- bf16, d_in = ${CFG.d_in}; times are µs per call (device-event medians, 4 rotating weight sets)`,
    `- copy bandwidth (read+write): lorakit ${fmt(copyTbps, 2)} TB/s${peft && peft.copy_tbps ? `, torch ${peft.copy_tbps.toFixed(2)} TB/s` : ''}`);
  if (doraOnly) return write([...lines, ...doraReport(rows, peft, fmt)], 'gpu-dora', { date, info, cmd, rows, peft, copyTbps });
  lines.push('', '## forward and forward+backward', '',
    '| d_out | n | r | cuBLASLt base | lorakit fwd | fwd/base | torch base | peft fwd | peft/torch base | speedup vs peft | base+dx | lorakit fwd+bwd | fb/(base+dx) | torch base+dx | peft fwd+bwd | peft fb/(torch base+dx) | speedup vs peft |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const q of rows.filter((r) => !r.op)) {
    const p = pf(q) || {};
    lines.push(`| ${q.d_out} | ${q.n} | ${q.r} | ${fmt(q.base_fwd_us)} | ${fmt(q.fwd_us)} | ${fmt(q.fwd_us / q.base_fwd_us, 3)} | ${fmt(p.torch_base_fwd_us)} | ${fmt(p.peft_fwd_us)} | ${fmt(p.peft_fwd_us / p.torch_base_fwd_us, 3)} | ${fmt(p.peft_fwd_us / q.fwd_us, 2)} | ${fmt(q.base_fwd_dx_us)} | ${fmt(q.fwdbwd_us)} | ${fmt(q.fwdbwd_us / q.base_fwd_dx_us, 3)} | ${fmt(p.torch_base_fwd_dx_us)} | ${fmt(p.peft_fwdbwd_us)} | ${fmt(p.peft_fwdbwd_us / p.torch_base_fwd_dx_us, 3)} | ${fmt(p.peft_fwdbwd_us / q.fwdbwd_us, 2)} |`);
  }
  lines.push('', '## merge (one pass over W, bf16, in place)', '', `roofline: read + write W once at the measured copy bandwidth ${copyTbps.toFixed(2)} TB/s`, '',
    '| d_out | r | lorakit µs | lorakit TB/s | % of copy roofline | peft µs | peft % of roofline | speedup vs peft |', '|---|---|---|---|---|---|---|---|');
  for (const q of rows.filter((r) => r.op === 'merge')) {
    const p = pf(q) || {};
    const roof = (4 * q.d_out * CFG.d_in) / (copyTbps * 1e12) * 1e6;
    lines.push(`| ${q.d_out} | ${q.r} | ${fmt(q.merge_us)} | ${fmt(q.merge_tbps, 2)} | ${fmt((100 * roof) / q.merge_us)} | ${fmt(p.peft_merge_us)} | ${fmt(p.peft_merge_us ? (100 * roof) / p.peft_merge_us : undefined)} | ${fmt(p.peft_merge_us / q.merge_us, 2)} |`);
  }
  lines.push('', '## exact merge and hot-swap (bf16, LoraLinear, adapters a and b)', '',
    'exact: merge or unmerge with side information (alternating; one pass each); swap: switchMerged a ⇄ b (one pass); peft: unmerge + merge of the other adapter', '',
    '| d_out | r | today merge µs | exact µs | exact/today speed | swap µs | exact unmerge+merge µs | peft unmerge+merge µs | swap speedup vs peft | side info bits/weight |',
    '|---|---|---|---|---|---|---|---|---|---|');
  for (const q of rows.filter((r) => r.op === 'exact')) {
    const p = (peft && peft.rows.find((x) => x.op === 'swap' && x.d_out === q.d_out && x.r === q.r)) || {};
    lines.push(`| ${q.d_out} | ${q.r} | ${fmt(q.merge_us)} | ${fmt(q.exact_us)} | ${fmt((100 * q.merge_us) / q.exact_us)}% | ${fmt(q.swap_us)} | ${fmt(q.exact_unmerge_merge_us)} | ${fmt(p.peft_swap_us)} | ${fmt(p.peft_swap_us / q.swap_us, 2)} | ${fmt(q.side_bits, 3)} |`);
  }
  lines.push('', '## 4-adapter mixed batch (adapterNames per row, round-robin), r = ' + CFG.mixed_r, '',
    '| d_out | n | cuBLASLt base | lorakit mixed | mixed/base | torch base | peft mixed | peft/torch base | speedup vs peft |', '|---|---|---|---|---|---|---|---|---|');
  for (const q of rows.filter((r) => r.op === 'mixed')) {
    const p = (peft && peft.rows.find((x) => x.op === 'mixed' && x.d_out === q.d_out && x.n === q.n)) || {};
    lines.push(`| ${q.d_out} | ${q.n} | ${fmt(q.base_fwd_us)} | ${fmt(q.mixed_us)} | ${fmt(q.mixed_us / q.base_fwd_us, 3)} | ${fmt(p.torch_base_fwd_us)} | ${fmt(p.peft_mixed_us)} | ${fmt(p.peft_mixed_us / p.torch_base_fwd_us, 3)} | ${fmt(p.peft_mixed_us / q.mixed_us, 2)} |${p.error ? ' peft: ' + p.error : ''}`);
  }
  lines.push(...doraReport(rows, peft, fmt));
  write(lines, 'gpu', { date, info, cmd, rows, peft, copyTbps });
}

function write(lines, prefix, { date, info, cmd, rows, peft, copyTbps }) {
  const md = lines.join('\n') + '\n';
  console.log(md);
  fs.mkdirSync(outDir, { recursive: true });
  const stamp = date.slice(0, 19).replace(/[:T]/g, '-');
  for (const [ext, body] of [['md', md], ['json', JSON.stringify({ date, gpu: info.cudaDevice, command: cmd, cfg: CFG, copyTbps, rows, peft }, null, 1)]]) {
    const file = path.join(outDir, `${prefix}-${stamp}.${ext}`);
    fs.writeFileSync(file + '.tmp', body);
    fs.renameSync(file + '.tmp', file);
  }
}

main();
