#!/usr/bin/env node
/**
 * `lorakit merge` into a synthetic GGUF base of ≥ 2 GB (llama layout, f16 by default: 32000-token
 * embedding and output, layers of q/k/v/o + gate/up/down at hidden 2048, ffn 5632) with a peft
 * adapter of r=16 on every linear layer. Measured in the same run, on the same disk: a plain copy of
 * the base (64 MiB reads and writes through user space, fsync'ed, as the merge's own writes are)
 * and the merge (the CLI in a child process: its peak RSS from getrusage and /proc VmHWM must stay
 * under 25% of the file). One merged tensor is checked against W + s·B·A computed here. Writes
 * bench/results/gguf-merge-<date>.txt with the date, machine and command. Files go to a temporary
 * directory (or --dir) and are deleted afterwards.
 *
 * usage: node bench/gguf_merge.js [--gb 2.1] [--type f16|q8_0|f32] [--outtype same|...] [--dir DIR]   (npm run build:ts first)
 */
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawn } = require('child_process');
const root = path.join(__dirname, '..');
const lk = require(root);

const opt = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const targetBytes = Number(opt('gb', '2.1')) * 1e9;
const baseType = opt('type', 'f16');
const outtype = opt('outtype', 'same');
const H = 2048;
const FFN = 5632;
const VOCAB = 32000;
const HEADS = 16;
const R = 16;
const TYPE = { f32: lk.GGML.F32, f16: lk.GGML.F16, q8_0: lk.GGML.Q8_0 }[baseType];
if (TYPE === undefined) throw new Error(`--type must be f32, f16 or q8_0, got ${baseType}`);

const LAYER = [['attn_q', [H, H]], ['attn_k', [H, H]], ['attn_v', [H, H]], ['attn_output', [H, H]], ['ffn_gate', [FFN, H]], ['ffn_up', [FFN, H]], ['ffn_down', [H, FFN]]];
const HF = { attn_q: 'self_attn.q_proj', attn_k: 'self_attn.k_proj', attn_v: 'self_attn.v_proj', attn_output: 'self_attn.o_proj', ffn_gate: 'mlp.gate_proj', ffn_up: 'mlp.up_proj', ffn_down: 'mlp.down_proj' };
const bytesOf = (shape, type) => (shape.reduce((a, b) => a * b, 1) / lk.ggmlType(type).blockSize) * lk.ggmlType(type).typeSize;

function makeBase(file) {
  const specs = [{ name: 'token_embd.weight', type: TYPE, shape: [VOCAB, H] }];
  let bytes = bytesOf([VOCAB, H], TYPE) * 2;
  let layers = 0;
  while (bytes < targetBytes) {
    specs.push({ name: `blk.${layers}.attn_norm.weight`, type: lk.GGML.F32, shape: [H] }, { name: `blk.${layers}.ffn_norm.weight`, type: lk.GGML.F32, shape: [H] });
    for (const [n, s] of LAYER) {
      specs.push({ name: `blk.${layers}.${n}.weight`, type: TYPE, shape: s });
      bytes += bytesOf(s, TYPE);
    }
    layers++;
  }
  specs.push({ name: 'output_norm.weight', type: lk.GGML.F32, shape: [H] }, { name: 'output.weight', type: TYPE, shape: [VOCAB, H] });
  const v = lk.ggufValue;
  const meta = [
    ['general.architecture', v.str('llama')], ['general.type', v.str('model')], ['general.file_type', v.u32({ f32: 0, f16: 1, q8_0: 7 }[baseType])],
    ['llama.block_count', v.u32(layers)], ['llama.context_length', v.u32(4096)], ['llama.embedding_length', v.u32(H)], ['llama.feed_forward_length', v.u32(FFN)],
    ['llama.attention.head_count', v.u32(HEADS)], ['llama.attention.head_count_kv', v.u32(HEADS)], ['llama.rope.freq_base', v.f32(10000)],
    ['llama.attention.layer_norm_rms_epsilon', v.f32(1e-5)], ['llama.rope.dimension_count', v.u32(H / HEADS)],
  ];
  // 16 Mi normal values encoded once, written at shifting whole-block offsets
  const noise = new Float32Array(1 << 24);
  new lk.Rng(1).fillNormal(noise, 0, 0.02);
  const enc = lk.quantizeGgml(TYPE, noise);
  const w = new lk.GgufStreamWriter(file, meta, specs);
  specs.forEach((s, k) => {
    if (s.type === lk.GGML.F32 && s.shape.length === 1) return w.writeFloat32(s.name, new Float32Array(H).fill(1));
    let left = bytesOf(s.shape, s.type);
    const unit = lk.ggmlType(s.type).typeSize;
    let off = (k % 64) * unit;
    while (left > 0) {
      const n = Math.min(left, enc.length - off);
      w.write(s.name, enc.subarray(off, off + n));
      left -= n;
      off = 0;
    }
  });
  w.commit();
  return { bytes: fs.statSync(file).size, layers, tensors: specs.length };
}

function makeAdapter(dir, layers) {
  fs.mkdirSync(dir);
  const t = new Map();
  const rng = new lk.Rng(2);
  for (let i = 0; i < layers; i++) {
    for (const [n, [out, inF]] of LAYER) {
      const key = `base_model.model.model.layers.${i}.${HF[n]}`;
      t.set(`${key}.lora_A.weight`, lk.Tensor.from(rng.fillNormal(new Float32Array(R * inF), 0, 0.02), [R, inF]));
      t.set(`${key}.lora_B.weight`, lk.Tensor.from(rng.fillNormal(new Float32Array(out * R), 0, 0.02), [out, R]));
    }
  }
  lk.writeSafetensors(path.join(dir, 'adapter_model.safetensors'), t, { format: 'pt' });
  for (const x of t.values()) x.dispose();
  fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: R, lora_alpha: 32, target_modules: Object.values(HF).map((m) => m.split('.')[1]) }));
}

function plainCopy(src, dst) {
  const t0 = process.hrtime.bigint();
  const buf = Buffer.alloc(64 << 20);
  const fi = fs.openSync(src, 'r');
  const fo = fs.openSync(dst, 'w');
  let pos = 0;
  for (;;) {
    const n = fs.readSync(fi, buf, 0, buf.length, pos);
    if (n === 0) break;
    let off = 0;
    while (off < n) off += fs.writeSync(fo, buf, off, n - off, pos + off);
    pos += n;
  }
  fs.fsyncSync(fo);
  fs.closeSync(fi);
  fs.closeSync(fo);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function runCli(args) {
  const code = `require(${JSON.stringify(path.join(root, 'dist', 'cli.js'))}).main(${JSON.stringify(args)}).then((c) => {` +
    `const u = process.resourceUsage(); process.stderr.write('MAXRSS_KB ' + u.maxRSS + ' CPU user ' + (u.userCPUTime / 1e6).toFixed(1) + ' s, sys ' + (u.systemCPUTime / 1e6).toFixed(1) + ' s\\n'); process.exit(c); })`;
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
      const m = /MAXRSS_KB (\d+) CPU (.*)/.exec(err);
      resolve({ status, seconds: (Date.now() - t0) / 1000, maxRssKb: m ? Number(m[1]) : 0, cpu: m ? m[2] : '?', hwmKb, out, err });
    });
  });
}

/** ‖merged − (W + s·B·A)‖ / ‖W + s·B·A‖ for blk.0.attn_v (no Q/K permutation involved). */
function spotCheck(base, adapterDir, merged) {
  const b = new lk.GgufReader(base);
  const m = new lk.GgufReader(merged);
  const ad = new lk.SafetensorsReader(path.join(adapterDir, 'adapter_model.safetensors'));
  const name = 'blk.0.attn_v.weight';
  const W = lk.Tensor.from(b.float32(name), [H, H]);
  const A = ad.tensor('base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight');
  const B = ad.tensor('base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight');
  lk.kernels.mergeAdapter(W, { loraA: A, loraB: B, scaling: 32 / R });
  const want = W.toFloat32Array();
  const got = m.float32(name);
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    num += (got[i] - want[i]) ** 2;
    den += want[i] ** 2;
  }
  [W, A, B].forEach((t) => t.dispose());
  [b, m, ad].forEach((r) => r.close());
  return Math.sqrt(num / den);
}

async function main() {
  const load0 = os.loadavg();
  const tmp = fs.mkdtempSync(path.join(opt('dir', os.tmpdir()), 'lorakit-gguf-merge-'));
  try {
    const base = path.join(tmp, 'base.gguf');
    let t0 = Date.now();
    const info = makeBase(base);
    makeAdapter(path.join(tmp, 'adapter'), info.layers);
    console.log(`base: ${(info.bytes / 1e9).toFixed(2)} GB ${baseType}, ${info.tensors} tensors, ${info.layers} layers (made in ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    const copySeconds = plainCopy(base, path.join(tmp, 'copy.gguf'));
    fs.rmSync(path.join(tmp, 'copy.gguf'));
    console.log(`plain copy: ${copySeconds.toFixed(1)} s (${(info.bytes / 1e6 / copySeconds).toFixed(0)} MB/s)`);
    const args = ['merge', '--base', base, '--adapter', path.join(tmp, 'adapter'), '--out', path.join(tmp, 'merged.gguf'), '--outtype', outtype, '--quiet'];
    t0 = Date.now();
    const res = await runCli(args);
    if (res.status !== 0) throw new Error(`merge failed (${res.status}): ${res.err}`);
    const peak = Math.max(res.maxRssKb, res.hwmKb) * 1024;
    const ratio = peak / info.bytes;
    const err = spotCheck(base, path.join(tmp, 'adapter'), path.join(tmp, 'merged.gguf'));
    const tol = baseType === 'f32' && outtype === 'same' ? 1e-6 : 2e-2;
    const mach = require(path.join(root, 'dist', 'bench', 'machine.js')).machineInfo();
    const lines = [
      `date: ${new Date().toISOString()}`,
      `machine: ${mach.cpuModel}, ${mach.logicalCpus} logical cpus (${mach.isa.join(' ')}), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM, ${os.platform()} ${os.release()}, node ${process.version}; disk: ${tmp.replace(/\/[^/]+$/, '')}; load average at the start ${load0.map((x) => x.toFixed(1)).join(' ')}, at the end ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`,
      `command: node bench/gguf_merge.js ${process.argv.slice(2).join(' ')}`.trimEnd(),
      `merge command: lorakit ${args.join(' ').replace(new RegExp(tmp, 'g'), '$TMP')}`,
      `base: ${info.bytes} bytes (${(info.bytes / 1e9).toFixed(2)} GB), ${baseType}, ${info.tensors} tensors, ${info.layers} layers; adapter r=${R} on the 7 linear weights of every layer (${info.layers * 7} merged tensors)`,
      `plain copy (64 MiB reads/writes, fsync): ${copySeconds.toFixed(2)} s, ${(info.bytes / 1e6 / copySeconds).toFixed(0)} MB/s`,
      `merge: ${res.seconds.toFixed(2)} s, ${(info.bytes / 1e6 / res.seconds).toFixed(0)} MB/s = ${(copySeconds / res.seconds).toFixed(3)}x the copy's throughput; CPU ${res.cpu}`,
      `peak RSS: ${(peak / 2 ** 20).toFixed(0)} MiB (getrusage ${res.maxRssKb} kB, VmHWM ${res.hwmKb} kB) = ${(100 * ratio).toFixed(1)}% of the file (limit 25%): ${ratio <= 0.25 ? 'PASS' : 'FAIL'}`,
      `spot check blk.0.attn_v.weight vs W + s·B·A: relative error ${err.toExponential(2)} (tolerance ${tol})`,
    ];
    console.log(lines.join('\n'));
    const outDir = path.join(__dirname, 'results');
    fs.mkdirSync(outDir, { recursive: true });
    const file = path.join(outDir, `gguf-merge-${new Date().toISOString().slice(0, 10)}.txt`);
    fs.writeFileSync(file, lines.join('\n') + '\n');
    console.log(`wrote ${path.relative(root, file)}`);
    process.exitCode = ratio <= 0.25 && err < tol ? 0 : 1;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
