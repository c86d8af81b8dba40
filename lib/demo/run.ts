/**
 * The end-to-end demo (`npm run demo`, `lorakit demo`): a frozen 2-layer MLP with fixed random
 * weights, a teacher that differs from it by a low-rank change of both weight matrices, LoRA on
 * fc1 and fc2 trained with AdamW to imitate the teacher, then merge, checks and timings.
 * Everything runs on the CPU from a seed; nothing is downloaded. With quantize (`--quantize nf4`) the
 * student's base is stored quantized (QLoRA): the base and the teacher use its dequantised weights,
 * so the teacher still differs from the student's base by a low-rank change.
 */
import * as fs from 'fs';
import * as path from 'path';
import { LoraRangeError, StateError } from '../errors';
import { writeFileAtomicSync } from '../io/atomic';
import { backendInfo } from '../kernels';
import { call } from '../native';
import { LoraModel } from '../model/lora_model';
import { QuantFormatName, QuantizedTensor, checkQuantFormat } from '../quantized_tensor';
import { Rng } from '../rng';
import { Tensor } from '../tensor';
import { mseLoss } from '../train/losses';
import { train } from '../train/loop';
import { AdamW } from '../train/optimizer';
import { lossCurveSvg } from '../train/plot';
import { cosineSchedule } from '../train/schedule';
import { DemoLinear, Mlp, MlpWeights } from './mlp';
import { RenderResult, renderPng } from './render_png';

export interface DemoOptions {
  steps?: number;
  batch?: number;
  inFeatures?: number;
  hidden?: number;
  outFeatures?: number;
  /** Rank of the teacher's weight change. */
  teacherRank?: number;
  r?: number;
  lr?: number;
  seed?: number;
  outDir?: string;
  device?: 'cpu' | 'cuda';
  /** Store the student's frozen base in this format (QLoRA); default: float. */
  quantize?: QuantFormatName;
  /** Rows in the timing batch and repetitions per timing. */
  timingBatch?: number;
  timingReps?: number;
  progress?: boolean;
  png?: boolean;
  /** Save the adapter (peft format) every N steps under <outDir>/checkpoints (default: steps/2). */
  checkpointEvery?: number;
  log?: (line: string) => void;
}

export interface DemoResult {
  losses: number[];
  /** Mean of the first and of the last 10 step losses, and their ratio. */
  lossStart: number;
  lossEnd: number;
  lossDrop: number;
  trainSeconds: number;
  trainableParams: number;
  allParams: number;
  /** ‖merged − unmerged‖ / ‖unmerged‖ on a held-out batch (a quantized base: merged into a float copy, mergeAndUnload). */
  mergeRelErr: number;
  /** A quantized base: the same after merging into the quantized weight in place (re-quantized, as peft's bnb merge). */
  quantizedMergeRelErr?: number;
  /** A quantized base: whether the exact unmerge gave the quantized bytes back. */
  quantizedBytesRestored?: boolean;
  /** A quantized base: bytes held per base weight. */
  baseBytesPerWeight?: number;
  /** ‖W_merged − W_teacher‖ / ‖W_teacher − W_base‖ per layer: how much of the change was learnt. */
  recoveryErr: Record<string, number>;
  /** Medians; base is measured alternately with merged, baseBesideUnmerged with unmerged. */
  timingMs: { base: number; unmerged: number; merged: number; baseBesideUnmerged: number };
  /** ‖reloaded − unmerged‖ / ‖unmerged‖: the saved peft adapter loaded onto a fresh base. */
  reloadRelErr: number;
  files: { lossLog: string; svg: string; png: string | null; summary: string; adapter: string; checkpoints: string[] };
  png: RenderResult;
}

function linearInit(rng: Rng, out: number, inF: number): { w: Tensor; b: Tensor } {
  const bound = 1 / Math.sqrt(inF); // nn.Linear's default init
  return {
    w: Tensor.from(rng.fillUniform(new Float32Array(out * inF), -bound, bound), [out, inF]),
    b: Tensor.from(rng.fillUniform(new Float32Array(out), -bound, bound), [out]),
  };
}

/** W + U·V with U [out, k], V [k, in], scaled so the change is about half of W's entries' size. */
function lowRankChange(rng: Rng, w: Tensor, k: number): Tensor {
  const [out, inF] = w.shape;
  const u = rng.fillNormal(new Float32Array(out * k), 0, 1);
  const v = rng.fillNormal(new Float32Array(k * inF), 0, 1);
  const base = Float32Array.from(w.toFloat32Array()); // a copy in this realm (see gelu.ts)
  const scale = 0.5 / Math.sqrt(3 * inF * k); // entries of W have std 1/√(3·in)
  for (let i = 0; i < out; i++)
    for (let j = 0; j < inF; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += u[i * k + p] * v[p * inF + j];
      base[i * inF + j] += scale * s;
    }
  return Tensor.from(base, w.shape);
}

function relDiff(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-300));
}

/** Median times of a and b, measured alternately so load changes on a shared machine hit both. */
function medianMsPair(a: () => void, b: () => void, reps: number): [number, number] {
  a();
  b(); // warm-up
  const ta: number[] = [];
  const tb: number[] = [];
  for (let i = 0; i < reps; i++) {
    for (const [fn, t] of [[a, ta], [b, tb]] as const) {
      const t0 = performance.now();
      fn();
      t.push(performance.now() - t0);
    }
  }
  const med = (t: number[]) => t.sort((x, y) => x - y)[Math.floor(t.length / 2)];
  return [med(ta), med(tb)];
}

/** Throws a clear error unless the device can run the demo. */
export function checkDevice(device: string): 'cpu' | 'cuda' {
  if (device === 'cpu') return 'cpu';
  if (device !== 'cuda') throw new LoraRangeError(`--device: expected 'cpu' or 'cuda', got '${device}'`);
  const info = backendInfo();
  const why = info.cudaUnavailable ?? 'unknown reason';
  if (!info.compiled.includes('cuda'))
    throw new StateError(`--device cuda: this build of lorakit has no CUDA backend: ${why}. Install what is missing and rebuild (npm run build:native), or use --device cpu.`);
  if (!info.usable.includes('cuda')) throw new StateError(`--device cuda: ${why}; use --device cpu.`);
  return 'cuda';
}

export async function runDemo(opts: DemoOptions = {}): Promise<DemoResult> {
  const log = opts.log ?? ((s: string) => console.log(s));
  const device = checkDevice(opts.device ?? 'cpu');
  const onDevice = (t: Tensor): Tensor => (device === 'cpu' ? t : t.to({ device }));
  const sync = () => {
    if (device === 'cuda') call((b) => b.cudaSynchronize());
  };
  if (opts.steps !== undefined && (!Number.isInteger(opts.steps) || opts.steps < 1))
    throw new LoraRangeError(`steps: expected a positive integer, got ${opts.steps}`);
  const steps = opts.steps ?? 400;
  const batch = opts.batch ?? 64;
  const D = opts.inFeatures ?? 128;
  const H = opts.hidden ?? 384;
  const O = opts.outFeatures ?? 128;
  const k = opts.teacherRank ?? 4;
  const r = opts.r ?? 8;
  const seed = opts.seed ?? 0;
  const outDir = path.resolve(opts.outDir ?? 'lorakit-demo-out');
  fs.mkdirSync(outDir, { recursive: true });
  const rng = new Rng(seed);
  const format = opts.quantize === undefined ? null : checkQuantFormat(opts.quantize, 'quantize');

  // Frozen base with fixed random weights, and a teacher = base + low-rank change.
  const c1 = linearInit(rng, H, D);
  const c2 = linearInit(rng, O, H);
  const q1 = format ? QuantizedTensor.quantize(c1.w, format) : null;
  const q2 = format ? QuantizedTensor.quantize(c2.w, format) : null;
  if (q1 && q2) {
    // the base the student trains on is the quantized one: base and teacher start from its values
    c1.w = q1.dequantize();
    c2.w = q2.dequantize();
  }
  const teacherW = { w1: onDevice(lowRankChange(rng, c1.w, k)), w2: onDevice(lowRankChange(rng, c2.w, k)) };
  const l1 = { w: onDevice(c1.w), b: onDevice(c1.b) };
  const l2 = { w: onDevice(c2.w), b: onDevice(c2.b) };
  const baseW: MlpWeights = { w1: l1.w, b1: l1.b, w2: l2.w, b2: l2.b };
  const base = Mlp.fromWeights(baseW).train(false);
  const teacher = Mlp.fromWeights({ w1: teacherW.w1, b1: l1.b, w2: teacherW.w2, b2: l2.b }).train(false);
  const studentW: MlpWeights = { w1: q1 ? q1.to({ device }) : l1.w.clone(), b1: l1.b, w2: q2 ? q2.to({ device }) : l2.w.clone(), b2: l2.b };

  // LoRA injected into the named targets, as peft's get_peft_model.
  const targets = ['fc1', 'fc2'];
  const model = new LoraModel(Mlp.modules(studentW), { targetModules: targets, r, loraAlpha: 2 * r, seed: seed + 100 });
  const student = new Mlp(model.layers.get('fc1') as DemoLinear, model.layers.get('fc2') as DemoLinear);
  const params = model.parameters();
  const { trainable, total: all } = model.getNbTrainableParameters();
  log(`lorakit demo: MLP ${D}→${H}→${O} (GELU), teacher = base + rank-${k} change of fc1 and fc2; LoRA r=${r} on [${targets.join(', ')}]`);
  log(`backend: ${backendInfo().cpuPath}, ${backendInfo().threads} threads; device ${device}; seed ${seed}`);
  model.printTrainableParameters(log);
  const baseBytesPerWeight = q1 && q2 ? (q1.nbytes + q2.nbytes) / (q1.numel + q2.numel) : undefined;
  if (format) log(`QLoRA: the student's frozen base is ${format} (${baseBytesPerWeight!.toFixed(4)} bytes per weight, f32: 4); the adapters train in f32`);

  const optimizer = new AdamW(params, { lr: opts.lr ?? 3e-3 });
  const scheduler = cosineSchedule(optimizer, { warmupSteps: Math.max(1, Math.round(steps * 0.05)), totalSteps: steps });
  const dataRng = new Rng(seed + 1);
  const xs = new Float32Array(batch * D);
  const lossLog = path.join(outDir, 'loss.csv');
  const checkpointEvery = opts.checkpointEvery ?? Math.max(1, Math.ceil(steps / 2));
  const result = await train({
    checkpointEvery,
    checkpoint: { model, dir: path.join(outDir, 'checkpoints') },
    optimizer,
    scheduler,
    steps,
    logFile: lossLog,
    progress: opts.progress,
    step: () => {
      const x = Tensor.from(dataRng.fillNormal(xs, 0, 1), [batch, D], { device });
      const target = teacher.forward(x);
      const pred = student.forward(x);
      const { loss, grad } = mseLoss(pred, target);
      student.backward(grad);
      for (const t of [target, pred, grad]) t.dispose();
      return loss;
    },
  });
  const losses = result.losses;
  const avg = (a: number[]) => a.reduce((s, v) => s + v, 0) / Math.max(1, a.length);
  const lossStart = avg(losses.slice(0, 10));
  const lossEnd = avg(losses.slice(-10));
  log(`trained ${steps} steps in ${result.seconds.toFixed(1)} s: loss ${lossStart.toExponential(3)} → ${lossEnd.toExponential(3)} (${(lossStart / lossEnd).toFixed(1)}x lower)`);

  // The adapter in peft's format, then loaded back onto a fresh copy of the base.
  const adapterDir = path.join(outDir, 'adapter');
  model.savePretrained(adapterDir);
  student.train(false);
  const evalRng = new Rng(seed + 2);
  const nEval = opts.timingBatch ?? 1024;
  const xEval = Tensor.from(evalRng.fillNormal(new Float32Array(nEval * D), 0, 1), [nEval, D], { device });
  const reps = opts.timingReps ?? 15;
  const fwd = (m: Mlp) => () => {
    m.forward(xEval).dispose();
    sync();
  };
  const yUnmerged = student.forward(xEval).toFloat32Array();
  const reloadW: MlpWeights = { w1: l1.w.clone(), b1: l1.b, w2: l2.w.clone(), b2: l2.b };
  const reloaded = LoraModel.fromPretrained(Mlp.modules(reloadW), adapterDir, format ? { quantize: { format } } : {});
  const reloadedNet = new Mlp(reloaded.layers.get('fc1') as DemoLinear, reloaded.layers.get('fc2') as DemoLinear).train(false);
  const reloadRelErr = relDiff(reloadedNet.forward(xEval).toFloat32Array(), yUnmerged);
  reloaded.dispose();
  log(`saved the adapter in peft format to ${adapterDir} (adapter_config.json, adapter_model.safetensors); reloaded onto the base: relative difference ${reloadRelErr.toExponential(2)}`);
  const [tBase1, tUnmerged] = medianMsPair(fwd(base), fwd(student), reps);
  // A quantized base merges into float copies (mergeAndUnload's weights) for the exactness check.
  const mergedW = format ? { w1: student.fc1.mergeAndUnload(), w2: student.fc2.mergeAndUnload() } : null;
  const mergedNet = mergedW ? Mlp.fromWeights({ ...mergedW, b1: l1.b, b2: l2.b }).train(false) : student;
  let quantizedMergeRelErr: number | undefined;
  let bytesRestored = false;
  if (format) {
    const before = [student.fc1, student.fc2].map((l) => l.quantizedWeight!.bytes());
    model.mergeAdapter(); // in place: dequantise, add, re-quantize (peft's bnb merge)
    quantizedMergeRelErr = relDiff(student.forward(xEval).toFloat32Array(), yUnmerged);
    model.unmergeAdapter();
    bytesRestored = [student.fc1, student.fc2].every((l, i) => Buffer.from(l.quantizedWeight!.bytes()).equals(Buffer.from(before[i])));
  } else model.mergeAdapter();
  const yMerged = mergedNet.forward(xEval).toFloat32Array();
  const [tBase, tMerged] = medianMsPair(fwd(base), fwd(mergedNet), reps);
  const mergeRelErr = relDiff(yMerged, yUnmerged);
  const recoveryErr: Record<string, number> = {};
  const pairs: Array<[string, Tensor, Tensor, Tensor]> = [
    ['fc1', mergedW?.w1 ?? (studentW.w1 as Tensor), teacherW.w1, l1.w],
    ['fc2', mergedW?.w2 ?? (studentW.w2 as Tensor), teacherW.w2, l2.w],
  ];
  for (const [n, merged, tw, bw] of pairs) {
    const m = merged.toFloat32Array();
    const t = tw.toFloat32Array();
    const b = bw.toFloat32Array();
    recoveryErr[n] = relDiff(m, t) * Math.sqrt(t.reduce((s, v) => s + v * v, 0)) / Math.sqrt(t.reduce((s, v, i) => s + (v - b[i]) ** 2, 0));
  }
  log(`merged vs unmerged outputs (${nEval} held-out rows): relative difference ${mergeRelErr.toExponential(2)}${format ? ' (merged into f32 copies of the dequantised base)' : ''}`);
  if (quantizedMergeRelErr !== undefined)
    log(`merged into the ${format} base in place (re-quantized, as peft's bnb merge): relative difference ${quantizedMergeRelErr.toExponential(2)}; ` +
        (bytesRestored ? 'unmerge restored the quantized bytes exactly' : 'unmerge did NOT restore the quantized bytes'));
  log(`learnt weight change: ‖W_merged − W_teacher‖/‖W_teacher − W_base‖ = fc1 ${recoveryErr.fc1.toExponential(2)}, fc2 ${recoveryErr.fc2.toExponential(2)}`);
  log(`inference on ${nEval} rows, median of ${reps}, each timed alternately with the base: unmerged LoRA ${tUnmerged.toFixed(2)} ms vs base ${tBase1.toFixed(2)} ms (${(tUnmerged / tBase1).toFixed(2)}x); merged ${tMerged.toFixed(2)} ms vs base ${tBase.toFixed(2)} ms (${(tMerged / tBase).toFixed(2)}x)`);

  // Loss curve beside the log.
  const svgPath = path.join(outDir, 'loss_curve.svg');
  writeFileAtomicSync(svgPath, lossCurveSvg(losses, { title: `lorakit demo: LoRA r=${r} fitting a rank-${k} change (AdamW, cosine)` }));
  const pngPath = path.join(outDir, 'loss_curve.png');
  const png: RenderResult = opts.png === false ? { ok: false, reason: 'PNG disabled' } : renderPng(svgPath, pngPath);
  const summaryPath = path.join(outDir, 'summary.json');
  const res: DemoResult = {
    losses,
    lossStart,
    lossEnd,
    lossDrop: lossStart / lossEnd,
    trainSeconds: result.seconds,
    trainableParams: trainable,
    allParams: all,
    mergeRelErr,
    ...(format ? { quantizedMergeRelErr, quantizedBytesRestored: bytesRestored, baseBytesPerWeight } : {}),
    reloadRelErr,
    recoveryErr,
    timingMs: { base: tBase, unmerged: tUnmerged, merged: tMerged, baseBesideUnmerged: tBase1 },
    files: {
      lossLog,
      svg: svgPath,
      png: png.ok ? pngPath : null,
      summary: summaryPath,
      adapter: adapterDir,
      checkpoints: result.checkpoints.map((s) => path.join(outDir, 'checkpoints', `checkpoint-${s}`)),
    },
    png,
  };
  const { losses: _omit, ...summary } = res;
  writeFileAtomicSync(summaryPath, JSON.stringify({ seed, steps, batch, dims: [D, H, O], r, teacherRank: k, quantize: format, ...summary }, null, 2) + '\n');
  const show = (f: string) => {
    const rel = path.relative(process.cwd(), f);
    return rel && !rel.startsWith('..') ? rel : f;
  };
  log(`wrote ${show(lossLog)}, ${show(svgPath)}, ${show(summaryPath)}, ${show(adapterDir)}/, ${result.checkpoints.length} checkpoint(s) in ${show(path.join(outDir, 'checkpoints'))}/` + (png.ok ? `, ${show(pngPath)} (rendered with ${png.tool})` : ''));
  if (!png.ok) log(`no PNG of the loss curve: ${png.reason}`);
  optimizer.dispose();
  for (const t of [q1, q2, mergedW?.w1, mergedW?.w2]) t?.dispose();
  model.dispose();
  if (format) for (const t of [studentW.w1, studentW.w2]) t.dispose();
  return res;
}
