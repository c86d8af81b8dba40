#!/usr/bin/env node
/**
 * Bytes per weight and quantize → dequantize error of each format on a Gaussian W, then how much
 * rounding merging into a quantized base adds (peft's bnb merge: dequantise, add ΔW in f32,
 * re-quantize), per format: on a Gaussian W [d, d] (std 0.02, as LLM weights) with a LoRA delta of
 * ‖ΔW‖/‖W‖ = 1% and 10%, the RMS and max of deq(merged) − (deq(W) + ΔW), both relative to W's RMS;
 * the fraction of the quantized bytes a merge changes; the side information an exact merge keeps
 * (bytes per weight); and after merge({ exact: false }) + unmerge() the fraction of bytes that differ
 * from the original (peft's drift) and the RMS of deq(after) − deq(W). The exact path gives the
 * bytes back (checked here too). Writes bench/results/quant-merge-rounding-<date>-<machine>.txt.
 *
 *   node bench/quant_merge_rounding.js [--d 1024] [--r 16]
 */
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const lk = require('../dist');

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}
const D = Number(arg('d', 1024));
const R = Number(arg('r', 16));

function gaussian(n, seed, std) {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = std * Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next());
  return out;
}

function rms(a) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s / a.length);
}

function changedFraction(a, b) {
  let n = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) n++;
  return n / a.length;
}

const w = gaussian(D * D, 1, 0.02);
const wRms = rms(w);
const lines = [];
const log = (s) => {
  console.log(s);
  lines.push(s);
};
log(`quantized merge rounding: W [${D}, ${D}] ~ N(0, 0.02²), LoRA r=${R}; errors relative to rms(W); ${new Date().toISOString()}, ${os.cpus()[0].model}`);
log('format       bytes/weight  rms(deq(q(W)) − W)/rms(W)  max/rms(W)');
for (const format of lk.QUANT_FORMATS) {
  for (const doubleQuant of format === 'nf4' || format === 'fp4' ? [false, true] : [false]) {
    const q = lk.Tensor.quantize(lk.Tensor.from(w, [D, D]), format, { doubleQuant });
    const d = q.dequantize().toFloat32Array();
    let sq = 0;
    let mx = 0;
    for (let i = 0; i < d.length; i++) {
      sq += (d[i] - w[i]) ** 2;
      mx = Math.max(mx, Math.abs(d[i] - w[i]));
    }
    const name = doubleQuant ? `${format}+dq` : format;
    log(`${name.padEnd(12)} ${q.bytesPerWeight.toFixed(4).padStart(12)}  ${(Math.sqrt(sq / d.length) / wRms).toExponential(3).padStart(25)}  ${(mx / wRms).toExponential(3).padStart(10)}`);
    q.dispose();
  }
}
log('');
log('format       delta  rms(merge err)  max(merge err)  bytes changed  exact side info B/weight  exact unmerge  peft merge+unmerge: bytes differ  rms(drift)');
for (const format of lk.QUANT_FORMATS) {
  for (const rel of [0.01, 0.1]) {
    const q = lk.Tensor.quantize(lk.Tensor.from(w, [D, D]), format);
    const layer = new lk.LoraLinear({ weight: q });
    layer.addAdapter('a', { r: R, loraAlpha: R, initLoraWeights: false, seed: 7 });
    const delta0 = layer.getDeltaWeight('a').toFloat32Array();
    const k = (rel * wRms) / rms(delta0); // scale ΔW to the wanted size
    layer.setScale('a', k);
    const delta = layer.getDeltaWeight('a').toFloat32Array();
    const deqW = q.dequantize().toFloat32Array();
    const b0 = q.bytes();
    layer.merge();
    const merged = q.dequantize().toFloat32Array();
    let sq = 0;
    let mx = 0;
    for (let i = 0; i < merged.length; i++) {
      const e = merged[i] - (deqW[i] + delta[i]);
      sq += e * e;
      mx = Math.max(mx, Math.abs(e));
    }
    const changed = changedFraction(q.bytes(), b0);
    const side = layer.mergeSideInfoBytes / (D * D);
    layer.unmerge();
    const exactOk = Buffer.from(q.bytes()).equals(Buffer.from(b0));
    layer.merge({ exact: false });
    layer.unmerge();
    const drift = changedFraction(q.bytes(), b0);
    const after = q.dequantize().toFloat32Array();
    let dsq = 0;
    for (let i = 0; i < after.length; i++) dsq += (after[i] - deqW[i]) ** 2;
    log(
      `${format.padEnd(12)} ${String(rel * 100).padStart(4)}%  ${(Math.sqrt(sq / merged.length) / wRms).toExponential(3).padStart(14)}  ${(mx / wRms).toExponential(3).padStart(14)}` +
        `  ${(changed * 100).toFixed(2).padStart(12)}%  ${side.toFixed(4).padStart(24)}  ${(exactOk ? 'bytes equal' : 'DIFFER').padStart(13)}` +
        `  ${(drift * 100).toFixed(2).padStart(31)}%  ${(Math.sqrt(dsq / after.length) / wRms).toExponential(3).padStart(10)}`,
    );
    layer.dispose();
    q.dispose();
  }
}
const machine = os.cpus()[0].model.split(/\s+/).slice(0, 2).join('-').replace(/[^\w-]/g, '');
const out = path.join(__dirname, 'results', `quant-merge-rounding-${new Date().toISOString().slice(0, 10)}-${machine}.txt`);
fs.writeFileSync(out, lines.join('\n') + '\n');
console.log(`wrote ${path.relative(process.cwd(), out)}`);
