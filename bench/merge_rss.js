#!/usr/bin/env node
/**
 * Peak memory of `lorakit merge` on a synthetic checkpoint of ≥ 2 GB (f32, two shards with an
 * index, 32 layers of q/k/v/o + MLP weights and a 0.5 GB embedding), LoRA r=16 on q_proj and
 * v_proj. The CLI runs in a child process; its peak RSS (getrusage maxRSS, cross-checked with
 * /proc VmHWM) must stay under 25% of the checkpoint size. Everything is created in a temporary
 * directory and deleted afterwards. Results go to bench/results/merge_rss-<date>.json.
 *
 * usage: node bench/merge_rss.js [--gb 2.1]   (run `npm run build:ts` first)
 */
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawn } = require('child_process');
const root = path.join(__dirname, '..');
const lk = require(root);

const argGb = process.argv.indexOf('--gb');
const targetBytes = (argGb > 0 ? Number(process.argv[argGb + 1]) : 2.1) * 1e9;
const H = 2048;
const FFN = 5632;
const VOCAB = 32000;
const R = 16;

function layerSpecs(i) {
  const p = `model.layers.${i}`;
  return [
    [`${p}.self_attn.q_proj.weight`, [H, H]],
    [`${p}.self_attn.k_proj.weight`, [H, H]],
    [`${p}.self_attn.v_proj.weight`, [H, H]],
    [`${p}.self_attn.o_proj.weight`, [H, H]],
    [`${p}.mlp.up_proj.weight`, [FFN, H]],
    [`${p}.mlp.down_proj.weight`, [H, FFN]],
    [`${p}.input_layernorm.weight`, [H]],
  ];
}

function makeCheckpoint(dir) {
  const specs = [['model.embed_tokens.weight', [VOCAB, H]]];
  let bytes = VOCAB * H * 4;
  let layers = 0;
  while (bytes < targetBytes) {
    for (const [n, s] of layerSpecs(layers)) {
      specs.push([n, s]);
      bytes += s.reduce((a, b) => a * b, 1) * 4;
    }
    layers++;
  }
  specs.push(['model.norm.weight', [H]]);
  // Two shards split by bytes, as transformers would.
  const shards = [[], []];
  let acc = 0;
  for (const s of specs) {
    shards[acc < bytes / 2 ? 0 : 1].push(s);
    acc += s[1].reduce((a, b) => a * b, 1) * 4;
  }
  const noise = new Float32Array(1 << 22); // 16 MiB of values, reused at shifting offsets
  const rng = new lk.Rng(1);
  rng.fillNormal(noise, 0, 0.02);
  const weightMap = {};
  shards.forEach((list, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    const w = new lk.SafetensorsStreamWriter(path.join(dir, file), list.map(([name, shape]) => ({ name, dtype: 'F32', shape })), { format: 'pt' });
    list.forEach(([name, shape], k) => {
      let left = shape.reduce((a, b) => a * b, 1);
      let off = k % 1024;
      while (left > 0) {
        const n = Math.min(left, noise.length - off);
        w.write(name, new Uint8Array(noise.buffer, off * 4, n * 4));
        left -= n;
        off = 0;
      }
      weightMap[name] = file;
    });
    w.commit();
  });
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: bytes }, weight_map: weightMap }, null, 2));
  return { bytes, layers, tensors: specs.length };
}

function makeAdapter(dir, layers) {
  fs.mkdirSync(dir);
  const t = new Map();
  const rng = new lk.Rng(2);
  for (let i = 0; i < layers; i++) {
    for (const m of ['q_proj', 'v_proj']) {
      const key = `base_model.model.model.layers.${i}.self_attn.${m}`;
      t.set(`${key}.lora_A.weight`, lk.Tensor.from(rng.fillNormal(new Float32Array(R * H), 0, 0.02), [R, H]));
      t.set(`${key}.lora_B.weight`, lk.Tensor.from(rng.fillNormal(new Float32Array(H * R), 0, 0.02), [H, R]));
    }
  }
  lk.writeSafetensors(path.join(dir, 'adapter_model.safetensors'), t, { format: 'pt' });
  fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: R, lora_alpha: 32, target_modules: ['q_proj', 'v_proj'], fan_in_fan_out: false, use_rslora: false }));
}

function runMerge(args) {
  // The CLI's own main() in a child process, which reports its getrusage peak when done.
  const code = `require(${JSON.stringify(path.join(root, 'dist', 'cli.js'))}).main(${JSON.stringify(args)}).then((c) => {` +
    `process.stderr.write('MAXRSS_KB ' + process.resourceUsage().maxRSS + '\\n'); process.exit(c); })`;
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
    let hwmKb = 0;
    const poll = setInterval(() => {
      try {
        const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8'));
        if (m) hwmKb = Math.max(hwmKb, Number(m[1]));
      } catch { /* exited */ }
    }, 20);
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (status) => {
      clearInterval(poll);
      const m = /MAXRSS_KB (\d+)/.exec(err);
      resolve({ status, seconds: (Date.now() - t0) / 1000, maxRssKb: m ? Number(m[1]) : null, hwmKb, out, err });
    });
  });
}

function checkOneTensor(baseDir, adapterDir, outDir, name, module) {
  const base = lk.Checkpoint.open(baseDir);
  const merged = lk.Checkpoint.open(outDir);
  const ad = lk.Checkpoint.open(path.join(adapterDir, 'adapter_model.safetensors'));
  const W = base.tensor(name);
  const A = ad.tensor(`base_model.model.${module}.lora_A.weight`);
  const B = ad.tensor(`base_model.model.${module}.lora_B.weight`);
  lk.kernels.mergeAdapter(W, { loraA: A, loraB: B, scaling: 32 / R });
  const want = W.toFloat32Array();
  const got = merged.readerOf(name).float32(name);
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) { num += (got[i] - want[i]) ** 2; den += want[i] ** 2; }
  [W, A, B].forEach((t) => t.dispose());
  [base, merged, ad].forEach((c) => c.close());
  return Math.sqrt(num / den);
}

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-merge-rss-'));
  try {
    const baseDir = path.join(tmp, 'base');
    fs.mkdirSync(baseDir);
    const t0 = Date.now();
    const ck = makeCheckpoint(baseDir);
    makeAdapter(path.join(tmp, 'adapter'), ck.layers);
    console.log(`checkpoint: ${(ck.bytes / 1e9).toFixed(2)} GB, ${ck.tensors} tensors, ${ck.layers} layers (made in ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    const args = ['merge', '--base', baseDir, '--adapter', path.join(tmp, 'adapter'), '--out', path.join(tmp, 'out'), '--quiet'];
    const res = await runMerge(args);
    if (res.status !== 0) throw new Error(`merge failed (${res.status}): ${res.err}`);
    const peakBytes = Math.max(res.maxRssKb ?? 0, res.hwmKb) * 1024;
    const ratio = peakBytes / ck.bytes;
    const relErr = checkOneTensor(baseDir, path.join(tmp, 'adapter'), path.join(tmp, 'out'), 'model.layers.1.self_attn.v_proj.weight', 'model.layers.1.self_attn.v_proj');
    const result = {
      date: new Date().toISOString(),
      machine: `${os.cpus()[0].model}, ${os.cpus().length} cpus, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM, ${os.platform()} ${os.release()}, node ${process.version}`,
      command: `node bench/merge_rss.js${argGb > 0 ? ` --gb ${process.argv[argGb + 1]}` : ''}`,
      mergeCommand: `lorakit ${args.join(' ').replace(new RegExp(tmp, 'g'), '$TMP')}`,
      checkpointBytes: ck.bytes,
      tensors: ck.tensors,
      mergedTensors: ck.layers * 2,
      peakRssBytes: peakBytes,
      peakRssMaxRssKb: res.maxRssKb,
      peakRssVmHwmKb: res.hwmKb,
      peakRssOverCheckpoint: Number(ratio.toFixed(4)),
      limit: 0.25,
      pass: ratio < 0.25,
      mergeSeconds: res.seconds,
      throughputMBps: Number((ck.bytes / 1e6 / res.seconds).toFixed(1)),
      spotCheckRelErr: relErr,
    };
    console.log(`merge: ${res.seconds.toFixed(1)} s, peak RSS ${(peakBytes / 2 ** 20).toFixed(0)} MiB = ${(100 * ratio).toFixed(1)}% of the checkpoint (limit 25%): ${result.pass ? 'PASS' : 'FAIL'}; spot check rel err ${relErr.toExponential(2)}`);
    const outDir = path.join(__dirname, 'results');
    fs.mkdirSync(outDir, { recursive: true });
    const file = path.join(outDir, `merge_rss-${result.date.slice(0, 10)}.json`);
    fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
    console.log(`wrote ${path.relative(root, file)}`);
    process.exitCode = result.pass && relErr < 1e-5 ? 0 : 1;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
