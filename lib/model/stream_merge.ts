/**
 * Merges a peft adapter into a checkpoint on disk tensor by tensor: each targeted weight is read,
 * merged in f32 (W + s·B·A, rounded once to the output dtype) and written; every other tensor is
 * copied (or converted) in chunks. Peak memory is about one tensor plus the adapter. Outputs keep
 * the input's sharding, index and metadata, and are written to temporary files then renamed.
 */
import * as fs from 'fs';
import * as path from 'path';
import { FloatDType } from '../dtype';
import { AdapterError, LoraRangeError, LoraTypeError, ShapeError, shapeStr } from '../errors';
import { mergeAdapter } from '../kernels';
import { writeFileAtomicSync } from '../io/atomic';
import { Checkpoint, INDEX_FILE } from '../io/checkpoint';
import { SafetensorsReader } from '../io/safetensors_reader';
import { SafetensorsStreamWriter, TensorSpec } from '../io/safetensors_writer';
import { DTYPE_TO_SAFETENSORS, ELEMENT_SIZE, tensorFromBytes, tensorToBytes } from '../io/tensor_bytes';
import { Tensor } from '../tensor';
import { resolveConfig } from './config';
import { AdapterOnDisk, readAdapter } from './adapter_io';
import { patternKey } from './targeting';

export interface StreamMergeOptions {
  /** A .safetensors file, or a directory with model.safetensors.index.json (shards) or model.safetensors. */
  base: string;
  /** A peft adapter directory. */
  adapter: string;
  /** Output file (single-file base) or directory (sharded base). */
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
  /** DoRA: magnitude per output feature; the merged rows are rescaled to m / ‖W + s·B·A‖. */
  magnitude: Float32Array | null;
}

const COPY_CHUNK = 64 * 1024 * 1024;
const FLOAT_DTYPES = ['F32', 'F16', 'BF16'];

function as2d(t: Tensor, shape: [number, number]): Tensor {
  const f = t.toFloat32Array();
  return Tensor.from(f, shape);
}

/** Works out, for every adapter module, which base tensor it changes and how. */
function planTargets(ck: Checkpoint, a: AdapterOnDisk, scale: number): Map<string, MergeTarget> {
  const c = resolveConfig(a.config, 'adapter_config');
  const aliases = ck.aliases;
  const plan = new Map<string, MergeTarget>();
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
    const ak = patternKey(c.alphaPattern, mod);
    const alpha = ak === null ? c.loraAlpha : c.alphaPattern[ak];
    const scaling = (c.useRslora ? alpha / Math.sqrt(r) : alpha / r) * scale;
    const bad = () => new ShapeError(`adapter: module '${mod}': lora_A ${shapeStr(A.shape)} and lora_B ${shapeStr(B.shape)} do not fit the base weight ${shapeStr(W)}`);
    let target: Omit<MergeTarget, 'magnitude'>;
    if (t.magnitude && (t.embedding || A.shape.length === 4))
      throw new AdapterError(`adapter: module '${mod}' is a DoRA ${t.embedding ? 'embedding' : 'conv2d'}; the streaming merge supports DoRA on linear and conv1d weights only`);
    if (t.embedding) {
      if (W.length !== 2 || A.shape.join() !== [r, W[0]].join() || B.shape.join() !== [W[1], r].join()) throw bad();
      target = { A: as2d(A, [r, W[0]]), B: as2d(B, [W[1], r]), scaling, fanInFanOut: true, shape2d: [W[0], W[1]] };
    } else if (A.shape.length === 4) {
      const k = W[1] * W[2] * W[3];
      if (W.length !== 4 || A.shape.join() !== [r, W[1], W[2], W[3]].join() || B.shape.join() !== [W[0], r, 1, 1].join()) throw bad();
      target = { A: as2d(A, [r, k]), B: as2d(B, [W[0], r]), scaling, fanInFanOut: false, shape2d: [W[0], k] };
    } else {
      if (W.length !== 2 || A.shape.length !== 2 || B.shape.length !== 2 || B.shape[1] !== r) throw bad();
      const fitsLinear = W[1] === A.shape[1] && W[0] === B.shape[0];
      const fitsConv1d = W[0] === A.shape[1] && W[1] === B.shape[0];
      if (!fitsLinear && !fitsConv1d) throw bad();
      const fifo = fitsLinear && fitsConv1d ? c.fanInFanOut : fitsConv1d;
      target = { A: as2d(A, [r, A.shape[1]]), B: as2d(B, [B.shape[0], r]), scaling, fanInFanOut: fifo, shape2d: [W[0], W[1]] };
    }
    let magnitude: Float32Array | null = null;
    if (t.magnitude) {
      magnitude = t.magnitude.toFloat32Array();
      const outF = target.fanInFanOut ? W[1] : W[0];
      if (magnitude.length !== outF) throw new ShapeError(`adapter: module '${mod}': lora_magnitude_vector has ${magnitude.length} values, the weight has ${outF} output features`);
    }
    plan.set(wName, { ...target, magnitude });
  }
  return plan;
}

/** The merged bytes of one targeted tensor in the output dtype. */
function mergeOne(reader: SafetensorsReader, name: string, t: MergeTarget, outDtype: string): Uint8Array {
  const e = reader.entry(name);
  const src = tensorFromBytes(reader.bytes(name), e.dtype, t.shape2d, `${reader.path}: '${name}'`);
  let W = src;
  try {
    if (src.dtype !== 'f32') W = src.to({ dtype: 'f32' });
    mergeAdapter(W, { loraA: t.A, loraB: t.B, scaling: t.scaling }, { fanInFanOut: t.fanInFanOut });
    if (t.magnitude) W.copyFrom(doraRescale(W.toFloat32Array(), t.shape2d, t.fanInFanOut, t.magnitude));
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

/** DoRA's merge: each output feature of W' = W + s·B·A scaled by m / ‖that feature's weights‖ (peft's dora_factor). */
function doraRescale(w: Float32Array, [d0, d1]: [number, number], fanInFanOut: boolean, m: Float32Array): Float32Array {
  const outF = fanInFanOut ? d1 : d0;
  const norm = new Float64Array(outF);
  for (let i = 0; i < d0; i++) for (let j = 0; j < d1; j++) norm[fanInFanOut ? j : i] += w[i * d1 + j] * w[i * d1 + j];
  const k = Float64Array.from(norm, (n, o) => m[o] / Math.sqrt(n));
  for (let i = 0; i < d0; i++) for (let j = 0; j < d1; j++) w[i * d1 + j] *= k[fanInFanOut ? j : i];
  return w;
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

function outputPaths(ck: Checkpoint, out: string): { dir: string; files: Map<string, string> } {
  const files = new Map<string, string>();
  if (ck.sharded) {
    if (fs.existsSync(out) && !fs.statSync(out).isDirectory()) throw new LoraRangeError(`out: the base is sharded, so --out must be a directory; ${out} is a file`);
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
  const adapter = readAdapter(opts.adapter, opts.warn);
  const ck = Checkpoint.open(opts.base, 'base');
  const plan = new Map<string, MergeTarget>();
  const committed: string[] = [];
  try {
    for (const [k, v] of planTargets(ck, adapter, scale)) plan.set(k, v);
    const { dir, files } = outputPaths(ck, opts.out);
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
          if (t) {
            if (!FLOAT_DTYPES.includes(reader.entry(s.name).dtype)) throw new LoraTypeError(`base: '${s.name}' is ${reader.entry(s.name).dtype}; only F32, F16 and BF16 weights can be merged`);
            w.write(s.name, mergeOne(reader, s.name, t, s.dtype));
          } else copyOne(reader, s.name, s.dtype, w);
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
      committed.push(...copySidecars(ck.dir, dir, new Set([...ck.shardFiles, INDEX_FILE])));
    }
    return { tensors: total, merged: [...plan.keys()], files: committed, bytesWritten };
  } finally {
    for (const t of adapter.modules.values()) [t.A, t.B].forEach((x) => x?.dispose());
    for (const t of plan.values()) {
      t.A.dispose();
      t.B.dispose();
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
