/**
 * Merge and unmerge over a quantized base (LoraLinear with a QuantizedTensor weight), as peft's
 * bitsandbytes layers do it: W' = quantize(dequantize(W) + s·B·A), the sum in f32 (mergeDelta), the
 * result re-quantized into the same format and block size, in place.
 *
 * Exact by default (issue #17's contract for quantized bases: the original bytes come back): a merge
 * keeps the i32 words of the quantized bytes that it changed, as (index, old word) pairs, or all the
 * old words when that is smaller; unmerge writes them back, so W's bytes return bit for bit.
 * opts.exact false keeps nothing, and unmerge re-quantizes dequantize(W') − s·B·A (peft's unmerge),
 * which rounds once more each way.
 */
import { FloatDType, isFloatDType } from '../dtype';
import { AdapterError, DTypeError, LoraRangeError, LoraTypeError } from '../errors';
import { KernelSteps, step } from '../exec';
import { QuantizedTensor, isQuantizedTensor } from '../quantized_tensor';
import { Tensor } from '../tensor';
import { checkBool, checkOptions } from '../validate';
import { biasDeltaSteps } from './bias_terms';
import { MergeOptions } from './options';

/** The words a merge replaced: index null means every word (the whole old buffer). */
interface QuantRecord {
  index: Int32Array | null;
  words: Int32Array;
}

/** Per adapter merged exactly: the old words of W's bytes (host memory). */
export class QuantMergeRecords {
  readonly #records = new Map<string, QuantRecord>();

  get bytes(): number {
    let n = 0;
    for (const r of this.#records.values()) n += r.words.byteLength + (r.index?.byteLength ?? 0);
    return n;
  }

  has(name: string): boolean {
    return this.#records.has(name);
  }

  /** Records the words of `before` that differ in `after`, sparse or whole, whichever is smaller. */
  set(name: string, before: Int32Array, after: Int32Array): void {
    let changed = 0;
    for (let i = 0; i < before.length; i++) if (before[i] !== after[i]) changed++;
    if (changed * 8 >= before.byteLength) {
      this.#records.set(name, { index: null, words: before });
      return;
    }
    const index = new Int32Array(changed);
    const words = new Int32Array(changed);
    for (let i = 0, k = 0; i < before.length; i++) {
      if (before[i] === after[i]) continue;
      index[k] = i;
      words[k++] = before[i];
    }
    this.#records.set(name, { index, words });
  }

  /** current with the recorded words written back (current is changed and returned). */
  restore(name: string, current: Int32Array): Int32Array {
    const r = this.#records.get(name);
    if (!r) throw new Error(`internal: no quantized merge record for adapter '${name}'`);
    if (r.index === null) return r.words;
    for (let k = 0; k < r.index.length; k++) current[r.index[k]] = r.words[k];
    return current;
  }

  delete(name: string): void {
    this.#records.delete(name);
  }

  clear(): void {
    this.#records.clear();
  }
}

export interface MergeAndUnloadOptions {
  /** The merged weight's dtype (default f32). */
  dtype?: FloatDType;
  adapterNames?: string[];
  safeMerge?: boolean;
}

/** What the merge bodies need of the layer. */
export interface QuantMergeHost {
  weight: Tensor | QuantizedTensor;
  bias: Tensor | null;
  kind: string;
  /** The layer's merged adapters, oldest first (changed in place). */
  merged: string[];
  active: readonly string[];
  records: QuantMergeRecords;
  requireAdapter(name: unknown, argName: string): string;
  loraBBias(name: string): Tensor | undefined;
  scaling(name: string): number;
  /** out = W + sign·ΔW(name) for a float W (DoRA adapters as peft's merge and its inverse). */
  deltaSteps(name: string, sign: 1 | -1, W: Tensor, out: Tensor): KernelSteps<void>;
  /** Frees what a merge cached for a plain unmerge (a DoRA norm) once an exact record undid it. */
  dropMergeCache(name: string): void;
}

/** The adapters a merge takes (the active ones, or adapterNames), less those merged already; checked. */
function mergeTodo(host: QuantMergeHost, adapterNames: unknown): string[] {
  let names: readonly string[] = host.active;
  if (adapterNames !== undefined) {
    if (!Array.isArray(adapterNames)) throw new LoraTypeError('opts.adapterNames: expected an array of adapter names');
    adapterNames.forEach((n, i) => host.requireAdapter(n, `opts.adapterNames[${i}]`));
    names = adapterNames as string[];
  }
  const noBias = names.filter((n) => host.loraBBias(n) && !host.bias);
  if (noBias.length) throw new AdapterError(`merge: adapter(s) ${noBias.join(', ')} have a lora_B bias but ${host.kind} has no base bias to merge it into`);
  for (const n of names) {
    const s = host.scaling(n);
    if (!Number.isFinite(s)) throw new LoraRangeError(`scaling of adapter '${n}' is not finite (${s})`);
  }
  return names.filter((n, i) => !host.merged.includes(n) && names.indexOf(n) === i);
}

function quantizedBase(host: QuantMergeHost): QuantizedTensor {
  if (!isQuantizedTensor(host.weight)) throw new Error('internal: a quantized merge over a float base');
  return host.weight;
}

/** peft's merge over a bitsandbytes base, adapter by adapter (LoraLayer.merge's options). */
export function* quantMergeSteps(host: QuantMergeHost, opts: MergeOptions): KernelSteps<void> {
  const o = checkOptions(opts, ['safeMerge', 'adapterNames', 'exact'], 'opts') as MergeOptions;
  const safe = o.safeMerge === undefined ? false : checkBool(o.safeMerge, 'opts.safeMerge');
  const exact = o.exact === undefined ? true : checkBool(o.exact, 'opts.exact');
  const q = quantizedBase(host);
  for (const name of mergeTodo(host, o.adapterNames)) {
    const scale = host.scaling(name);
    const before = exact ? q.storage.toInt32Array() : null;
    const W = yield* q.dequantizeSteps();
    try {
      yield* host.deltaSteps(name, 1, W, W);
      if (safe && !(yield step('allFinite', W.handle)))
        throw new LoraRangeError(`merge: NaNs or infinities detected in the merged weight for adapter '${name}'; the weight was left unchanged`);
      const bB = host.loraBBias(name);
      if (bB) yield* biasDeltaSteps(host.bias!, bB, scale, safe, `adapter '${name}'`);
      yield step('quantize', W.handle, q.spec, q.storage.handle);
    } catch (e) {
      host.dropMergeCache(name);
      throw e;
    } finally {
      W.dispose();
    }
    if (before) host.records.set(name, before, q.storage.toInt32Array());
    host.merged.push(name);
  }
}

/** Undoes the merges newest first: recorded ones by writing their words back, others as peft (W − ΔW, re-quantized). */
export function* quantUnmergeSteps(host: QuantMergeHost): KernelSteps<void> {
  const q = quantizedBase(host);
  while (host.merged.length > 0) {
    const name = host.merged[host.merged.length - 1];
    if (host.records.has(name)) {
      q.storage.copyFrom(host.records.restore(name, q.storage.toInt32Array()));
      host.records.delete(name);
      host.dropMergeCache(name);
    } else {
      const W = yield* q.dequantizeSteps();
      try {
        yield* host.deltaSteps(name, -1, W, W);
        yield step('quantize', W.handle, q.spec, q.storage.handle);
      } finally {
        W.dispose();
      }
    }
    const bB = host.loraBBias(name);
    if (bB) yield* biasDeltaSteps(host.bias!, bB, -host.scaling(name), false, `adapter '${name}'`);
    host.merged.pop(); // only once W is restored, so a failed step can be retried
  }
}

/**
 * peft's merge_and_unload to a float model: W + Σ ΔW of the active (or named) adapters not merged
 * yet, as a new tensor in opts.dtype (default f32), the sum in f32 and rounded once; a quantized base
 * is dequantised first. The layer's weight is left as it is.
 */
export function* mergedFloatWeightSteps(host: QuantMergeHost, opts: MergeAndUnloadOptions): KernelSteps<Tensor> {
  const o = checkOptions(opts, ['dtype', 'adapterNames', 'safeMerge'], 'opts');
  const dtype = (o.dtype ?? 'f32') as FloatDType;
  if (!isFloatDType(dtype)) throw new DTypeError(`opts.dtype: expected f32, f16 or bf16, got ${String(dtype)}`);
  const safe = o.safeMerge === undefined ? false : checkBool(o.safeMerge, 'opts.safeMerge');
  const names = mergeTodo(host, o.adapterNames);
  const base = host.weight;
  const W = isQuantizedTensor(base) ? yield* base.dequantizeSteps() : base.to({ dtype: 'f32' });
  try {
    for (const name of names) {
      yield* host.deltaSteps(name, 1, W, W);
      host.dropMergeCache(name);
    }
    if (safe && !(yield step('allFinite', W.handle))) throw new LoraRangeError('mergeAndUnload: NaNs or infinities detected in the merged weight');
    if (dtype === 'f32') return W;
    const out = Tensor.empty(W.shape, { dtype, device: W.device });
    try {
      yield step('convert', W.handle, out.handle);
    } catch (e) {
      out.dispose();
      throw e;
    }
    W.dispose();
    return out;
  } catch (e) {
    W.dispose();
    throw e;
  }
}
