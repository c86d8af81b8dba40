/**
 * Merges a peft adapter into a checkpoint on disk tensor by tensor: each targeted weight is read,
 * merged in f32 (W + s·B·A, rounded once to the output dtype; DoRA: m / ‖W + s·B·A‖ · (W + s·B·A)
 * per output feature, by the native ops LoraLinear.merge uses) and written; every other tensor is
 * copied (or converted) in chunks. Peak memory is about one tensor plus the adapter. Outputs keep
 * the input's sharding, index and metadata, and are written to temporary files then renamed.
 * As peft's merge_and_unload, the adapter's trained biases (bias='all' / 'lora_only') and its
 * modules_to_save copies replace the base tensors, and a lora_bias adds s·b_B to the base bias.
 */
import * as fs from 'fs';
import * as path from 'path';
import { FloatDType } from '../dtype';
import { AdapterError, LoraRangeError, LoraTypeError, ShapeError, shapeStr } from '../errors';
import { KernelSteps, runSync, step } from '../exec';
import { mergeAdapter } from '../kernels';
import { writeFileAtomicSync } from '../io/atomic';
import { Checkpoint, INDEX_FILE } from '../io/checkpoint';
import { SafetensorsReader } from '../io/safetensors_reader';
import { SafetensorsStreamWriter, TensorSpec } from '../io/safetensors_writer';
import { DTYPE_TO_SAFETENSORS, ELEMENT_SIZE, tensorFromBytes, tensorToBytes } from '../io/tensor_bytes';
import { Tensor } from '../tensor';
import { resolveConfig } from './config';
import { AdapterOnDisk, disposeAdapter, readAdapterArg } from './adapter_io';
import { LoraKind, factorShapes, factorsFit, kindFromFactors, loraScaling } from './factors';
import { rankAndAlpha } from './targeting';

export interface StreamMergeOptions {
  /** A .safetensors file, or a model folder: model.safetensors.index.json (shards), model.safetensors or one .safetensors file. */
  base: string;
  /** A peft adapter directory. */
  adapter: string;
  /** Output file (base given as a file) or folder (base given as a model folder, sharded or not). */
  out: string;
  /** Output dtype of float tensors (default: each tensor's own). */
  dtype?: FloatDType;
  /** Multiplies the adapter's scaling (peft's set_scale factor). */
  scale?: number;
  /** Called after each tensor. */
  onProgress?: (done: number, total: number, name: string) => void;
  warn?: (message: string) => void;
}

export interface StreamMergeResult {
  tensors: number;
  merged: string[];
  files: string[];
  bytesWritten: number;
}

interface MergeTarget {
  A: Tensor; // 2-D f32
  B: Tensor; // 2-D f32
  scaling: number;
  fanInFanOut: boolean;
  /** W is viewed as this 2-D shape (conv2d: [out, in·kh·kw]). */
  shape2d: [number, number];
  /** DoRA: magnitude per output feature [out] (f32); the merged features are rescaled to m / ‖W + s·B·A‖. */
  magnitude: Tensor | null;
}

/** A non-weight tensor the adapter changes: replaced (trained bias, modules_to_save copy), then + scale·add (lora_bias). */
interface TensorOverride {
  replace: Tensor | null;
  add: { bB: Tensor; scale: number } | null;
}

const COPY_CHUNK = 64 * 1024 * 1024;
const FLOAT_DTYPES = ['F32', 'F16', 'BF16'];

function as2d(t: Tensor, shape: [number, number]): Tensor {
  const f = t.toFloat32Array();
  return Tensor.from(f, shape);
}

/** The base tensors the adapter replaces or shifts besides the LoRA weights; names and shapes checked. */
function planOverrides(ck: Checkpoint, a: AdapterOnDisk, scale: number, overrides: Map<string, TensorOverride>): void {
  const c = resolveConfig(a.config, 'adapter_config');
  const at = (name: string, t: Tensor, what: string): TensorOverride => {
    if (!ck.has(name)) throw new AdapterError(`adapter: ${what} has no tensor '${name}' in the base checkpoint to go to`);
    const want = ck.entry(name).shape;
    if (want.reduce((x, y) => x * y, 1) !== t.numel) throw new ShapeError(`adapter: ${what} ${shapeStr(t.shape)} does not fit the base tensor '${name}' ${shapeStr(want)}`);
    let o = overrides.get(name);
    if (!o) overrides.set(name, (o = { replace: null, add: null }));
    return o;
  };
  for (const [mod, b] of a.biases) at(`${mod}.bias`, b, `the trained bias of module '${mod}'`).replace = b;
  for (const [mod, params] of a.saved) for (const [p, t] of params) at(`${mod}.${p}`, t, `modules_to_save '${mod}.${p}'`).replace = t;
  for (const [mod, t] of a.modules) {
    if (!t.loraBBias) continue;
    const s = loraScaling(rankAndAlpha(c, mod).alpha, t.A!.shape[0], c.useRslora) * scale;
    at(`${mod}.bias`, t.loraBBias, `the lora_B bias of module '${mod}'`).add = { bB: t.loraBBias, scale: s };
  }
}

/** The bytes of an overridden tensor in the output dtype: (replacement or base) + scale·b_B, in f32. */
function overrideOne(reader: SafetensorsReader, name: string, o: TensorOverride, outDtype: string): Uint8Array {
  const e = reader.entry(name);
  const base = o.replace ? null : tensorFromBytes(reader.bytes(name), e.dtype, e.shape, `${reader.path}: '${name}'`);
  const v = (o.replace ?? base!).to({ dtype: 'f32' });
  try {
    if (o.add) runSync(addSteps(v, o.add.bB, o.add.scale));
    const out = outDtype === 'F32' ? v : v.to({ dtype: outDtype === 'F16' ? 'f16' : 'bf16' });
    try {
      return tensorToBytes(out).bytes;
    } finally {
      if (out !== v) out.dispose();
    }
  } finally {
    v.dispose();
    base?.dispose();
  }
}

function* addSteps(dst: Tensor, src: Tensor, scale: number): KernelSteps<void> {
  yield step('accumulate', dst.handle, src.handle, scale);
}

/** Works out, for every adapter module, which base tensor it changes and how. */
function planTargets(ck: Checkpoint, a: AdapterOnDisk, scale: number, plan: Map<string, MergeTarget>): void {
  const c = resolveConfig(a.config, 'adapter_config');
  const aliases = ck.aliases;
  for (const [mod, t] of a.modules) {
    const wName = `${mod}.weight`;
    if (!ck.has(wName)) {
      if (aliases.has(wName))
        throw new AdapterError(`adapter: module '${mod}' has a tied weight (stored as '${aliases.get(wName)}'); merging would change both tensors, so untie the weights first`);
      throw new AdapterError(`adapter: module '${mod}' has no weight '${wName}' in the base checkpoint`);
    }
    const W = ck.entry(wName).shape;
    const A = t.A!;
    const B = t.B!;
    const r = A.shape[0];
    const scaling = loraScaling(rankAndAlpha(c, mod).alpha, r, c.useRslora) * scale;
    const kind = kindFromFactors(W, { A: A.shape, B: B.shape, embedding: t.embedding }, c.fanInFanOut);
    if (t.magnitude && (kind === 'embedding' || kind === 'conv2d'))
      throw new AdapterError(`adapter: module '${mod}' is a DoRA ${kind}; the streaming merge supports DoRA on linear and conv1d weights only`);
    if (kind === null || !factorsFit(kind, W, A.shape, B.shape))
      throw new ShapeError(`adapter: module '${mod}': lora_A ${shapeStr(A.shape)} and lora_B ${shapeStr(B.shape)} do not fit the base weight ${shapeStr(W)}`);
    const target = mergeTarget(kind, W, A, B, scaling);
    plan.set(wName, target);
    if (t.magnitude) {
      const outF = target.fanInFanOut ? W[1] : W[0];
      if (t.magnitude.numel !== outF) throw new ShapeError(`adapter: module '${mod}': lora_magnitude_vector has ${t.magnitude.numel} values, the weight has ${outF} output features`);
      target.magnitude = Tensor.from(t.magnitude.toFloat32Array(), [outF]);
    }
  }
}

/**
 * The 2-D view of a merge: embedding W [num, dim] is a fan_in_fan_out linear; conv2d W [out, in,
 * kh, kw] is [out, in·kh·kw] with B [out, r, 1, 1] as [out, r].
 */
function mergeTarget(kind: LoraKind, W: readonly number[], A: Tensor, B: Tensor, scaling: number): MergeTarget {
  const r = A.shape[0];
  const s = factorShapes(kind, W, r);
  const inF = s.A.slice(1).reduce((x, y) => x * y, 1);
  const shape2d: [number, number] = kind === 'conv2d' ? [W[0], inF] : [W[0], W[1]];
  const fanInFanOut = kind === 'conv1d' || kind === 'embedding';
  return { A: as2d(A, [r, inF]), B: as2d(B, [s.B[0], r]), scaling, fanInFanOut, shape2d, magnitude: null };
}

/** The merged bytes of one targeted tensor in the output dtype. */
function mergeOne(reader: SafetensorsReader, name: string, t: MergeTarget, outDtype: string): Uint8Array {
  const e = reader.entry(name);
  const src = tensorFromBytes(reader.bytes(name), e.dtype, t.shape2d, `${reader.path}: '${name}'`);
  let W = src;
  try {
    if (src.dtype !== 'f32') W = src.to({ dtype: 'f32' });
    if (t.magnitude) runSync(doraMergeSteps(W, t, t.magnitude));
    else mergeAdapter(W, { loraA: t.A, loraB: t.B, scaling: t.scaling }, { fanInFanOut: t.fanInFanOut });
    if (outDtype === 'F32') return tensorToBytes(W).bytes;
    const out = W.to({ dtype: outDtype === 'F16' ? 'f16' : 'bf16' });
    try {
      return tensorToBytes(out).bytes;
    } finally {
      out.dispose();
    }
  } finally {
    if (W !== src) W.dispose();
    src.dispose();
  }
}

/** DoRA's merge in place (peft's dora merge): W ← m / ‖W + s·B·A‖ ⊙ (W + s·B·A), the norm per output feature. */
function* doraMergeSteps(W: Tensor, t: MergeTarget, m: Tensor): KernelSteps<void> {
  const norm = Tensor.zeros([m.numel], { dtype: 'f32' });
  try {
    yield step('doraWeightNorm', W.handle, t.A.handle, t.B.handle, t.scaling, t.fanInFanOut, norm.handle);
    yield step('doraMerge', W.handle, t.A.handle, t.B.handle, t.scaling, t.fanInFanOut, m.handle, norm.handle, false, W.handle);
  } finally {
    norm.dispose();
  }
}

/** Copies a tensor in chunks, converting float dtypes when asked. */
function copyOne(reader: SafetensorsReader, name: string, outDtype: string, w: SafetensorsStreamWriter): void {
  const e = reader.entry(name);
  const size = e.dataOffsets[1] - e.dataOffsets[0];
  if (outDtype === e.dtype) {
    if (size === 0) w.write(name, new Uint8Array(0));
    for (let off = 0; off < size; off += COPY_CHUNK) w.write(name, reader.range(name, off, Math.min(size, off + COPY_CHUNK)));
    return;
  }
  const elt = ELEMENT_SIZE[e.dtype];
  const chunk = Math.floor(COPY_CHUNK / 4 / elt) * elt;
  if (size === 0) w.write(name, new Uint8Array(0));
  for (let off = 0; off < size; off += chunk) {
    const bytes = reader.range(name, off, Math.min(size, off + chunk));
    const t = tensorFromBytes(bytes, e.dtype, [bytes.byteLength / elt], name);
    const c = t.to({ dtype: outDtype === 'F32' ? 'f32' : outDtype === 'F16' ? 'f16' : 'bf16' });
    try {
      w.write(name, tensorToBytes(c).bytes);
    } finally {
      c.dispose();
      t.dispose();
    }
  }
}

/** A model folder in gives a folder out (its shard file names kept); a file in gives a file out unless `out` is a folder. */
function outputPaths(ck: Checkpoint, out: string, baseIsDir: boolean): { dir: string; files: Map<string, string> } {
  const files = new Map<string, string>();
  if (ck.sharded || baseIsDir) {
    if (fs.existsSync(out) && !fs.statSync(out).isDirectory())
      throw new LoraRangeError(`out: the base is ${ck.sharded ? 'sharded' : 'a model folder'}, so out must be a folder (a merged copy of it); ${out} is a file`);
    fs.mkdirSync(out, { recursive: true });
    for (const f of ck.shardFiles) files.set(f, path.join(out, f));
    return { dir: out, files };
  }
  let file = out;
  if (out.endsWith(path.sep) || (fs.existsSync(out) && fs.statSync(out).isDirectory())) {
    fs.mkdirSync(out, { recursive: true });
    file = path.join(out, ck.shardFiles[0]);
  } else {
    const parent = path.dirname(path.resolve(out));
    if (!fs.existsSync(parent)) throw new LoraRangeError(`out: directory ${parent} does not exist`);
  }
  files.set(ck.shardFiles[0], file);
  return { dir: path.dirname(file), files };
}

/** Streams base + adapter → merged checkpoint. */
export async function mergeCheckpoint(opts: StreamMergeOptions): Promise<StreamMergeResult> {
  const scale = opts.scale ?? 1;
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new LoraTypeError(`scale: expected a finite number, got ${String(opts.scale)}`);
  if (opts.dtype !== undefined && !['f32', 'f16', 'bf16'].includes(opts.dtype)) throw new LoraTypeError(`dtype: expected f32, f16 or bf16, got ${String(opts.dtype)}`);
  if (typeof opts.out !== 'string' || opts.out.length === 0) throw new LoraTypeError('out: expected an output path');
  const adapter = readAdapterArg(opts.adapter, 'adapter', opts.warn);
  const ck = Checkpoint.open(opts.base, 'base');
  const baseIsDir = fs.statSync(opts.base).isDirectory();
  const plan = new Map<string, MergeTarget>();
  const overrides = new Map<string, TensorOverride>();
  const committed: string[] = [];
  try {
    planTargets(ck, adapter, scale, plan);
    planOverrides(ck, adapter, scale, overrides);
    const { dir, files } = outputPaths(ck, opts.out, baseIsDir);
    for (const [shard, outFile] of files) {
      if (path.resolve(outFile) === path.resolve(ck.dir, shard)) throw new LoraRangeError(`out: ${outFile} is the base file itself; write the merge elsewhere`);
    }
    const outDtype = opts.dtype ? DTYPE_TO_SAFETENSORS[opts.dtype] : null;
    const dtypeOf = (st: string) => (outDtype && FLOAT_DTYPES.includes(st) ? outDtype : st);
    const total = ck.names.length;
    let done = 0;
    let bytesWritten = 0;
    const writers: SafetensorsStreamWriter[] = [];
    try {
      for (const [shard, outFile] of files) {
        const reader = ck.reader(shard);
        const specs: TensorSpec[] = reader.names.map((n) => ({ name: n, dtype: dtypeOf(reader.entry(n).dtype), shape: reader.entry(n).shape }));
        const w = new SafetensorsStreamWriter(outFile, specs, reader.metadata);
        writers.push(w);
        for (const s of specs) {
          const t = plan.get(s.name);
          const o = overrides.get(s.name);
          if ((t || o) && !FLOAT_DTYPES.includes(reader.entry(s.name).dtype))
            throw new LoraTypeError(`base: '${s.name}' is ${reader.entry(s.name).dtype}; only F32, F16 and BF16 tensors can be merged`);
          if (t) w.write(s.name, mergeOne(reader, s.name, t, s.dtype));
          else if (o) w.write(s.name, overrideOne(reader, s.name, o, s.dtype));
          else copyOne(reader, s.name, s.dtype, w);
          bytesWritten += s.shape.reduce((a, b) => a * b, 1) * ELEMENT_SIZE[s.dtype];
          opts.onProgress?.(++done, total, s.name);
          await new Promise((r) => setImmediate(r));
        }
      }
      for (const w of writers) w.commit();
      committed.push(...files.values());
    } catch (e) {
      for (const w of writers) w.abort();
      throw e;
    }
    if (ck.sharded) {
      const index = { metadata: { ...ck.index!.metadata, total_size: bytesWritten }, weight_map: ck.index!.weight_map };
      const indexPath = path.join(dir, INDEX_FILE);
      writeFileAtomicSync(indexPath, JSON.stringify(index, null, 2) + '\n');
      committed.push(indexPath);
    }
    if (baseIsDir) committed.push(...copySidecars(ck.dir, dir, new Set([...ck.shardFiles, INDEX_FILE])));
    return { tensors: total, merged: [...plan.keys(), ...overrides.keys()], files: committed, bytesWritten };
  } finally {
    disposeAdapter(adapter);
    for (const t of plan.values()) {
      t.A.dispose();
      t.B.dispose();
      t.magnitude?.dispose();
    }
    ck.close();
  }
}

/** Copies small non-weight files (config.json, tokenizer files) of a model directory. */
function copySidecars(from: string, to: string, skip: Set<string>): string[] {
  if (path.resolve(from) === path.resolve(to)) return [];
  const out: string[] = [];
  for (const f of fs.readdirSync(from)) {
    const p = path.join(from, f);
    if (skip.has(f) || f.startsWith('.') || /\.(safetensors|bin|pt|pth|ckpt|gguf)$/.test(f)) continue;
    const st = fs.statSync(p);
    if (!st.isFile() || st.size > 64 * 1024 * 1024) continue;
    writeFileAtomicSync(path.join(to, f), fs.readFileSync(p));
    out.push(path.join(to, f));
  }
  return out;
}
