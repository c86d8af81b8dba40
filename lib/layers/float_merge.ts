/**
 * Merge, unmerge and switchMerged of a LoraLayer over a float base (peft's merge / unmerge):
 * W ← W + s·ΔW per adapter, W ← W − s·ΔW undone newest first; lora_B's bias goes into b the same way.
 * Exact by default: the merges run as exact chains (exact_merge.ts), whose records give W back bit
 * for bit; safeMerge checks each adapter's merged weight for NaN/∞ before writing it; exact false,
 * or an adapter with a lora_B bias, takes peft's plain W ± ΔW. A quantized base: quant_merge.ts.
 */
import { AdapterError, LoraRangeError, LoraTypeError } from '../errors';
import { KernelSteps, step } from '../exec';
import { Tensor } from '../tensor';
import { checkBool, checkOptions } from '../validate';
import { biasDeltaSteps } from './bias_terms';
import { ExactOperands, ExactRecords, exactChainSteps } from './exact_merge';
import { MergeOptions } from './options';

/** What the float merge paths need of a layer (read when used: the maps and lists are the layer's own). */
export interface FloatMergeHost {
  /** The layer's class name, for messages. */
  readonly kind: string;
  /** The float base weight, changed in place. */
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  readonly active: readonly string[];
  /** The layer's merged adapters, oldest first (updated in place). */
  readonly merged: string[];
  readonly records: ExactRecords;
  readonly loraBBias: ReadonlyMap<string, Tensor>;
  readonly fanInFanOut: boolean;
  requireAdapter(name: unknown, argName: string): string;
  scaling(name: string): number;
  isDora(name: string): boolean;
  /** A and B, and the magnitude of a DoRA adapter (after the layer's requireMergeable check). */
  factors(name: string): { A: Tensor; B: Tensor; magnitude: Tensor | null };
  /** out = W + sign·ΔW(name) (the layer's deltaSteps). */
  deltaSteps(name: string, sign: 1 | -1, W: Tensor, out: Tensor): KernelSteps<void>;
  /** DoRA: the f32 weight norm of W as it stands, for the adapter's exact merge. */
  doraNormSteps(name: string, W: Tensor): KernelSteps<Tensor>;
  /** The layer's unmerge body (a subclass may override it). */
  unmergeSteps(): KernelSteps<unknown>;
}

/** merge(opts): the active (or named) adapters not merged yet, in order. */
export function* floatMergeSteps(host: FloatMergeHost, opts: MergeOptions): KernelSteps<void> {
  const o = checkOptions(opts, ['safeMerge', 'adapterNames', 'exact'], 'opts') as MergeOptions;
  const safe = o.safeMerge === undefined ? false : checkBool(o.safeMerge, 'opts.safeMerge');
  const exact = o.exact === undefined ? true : checkBool(o.exact, 'opts.exact');
  let names = host.active;
  if (o.adapterNames !== undefined) {
    if (!Array.isArray(o.adapterNames)) throw new LoraTypeError('opts.adapterNames: expected an array of adapter names');
    o.adapterNames.forEach((n, i) => host.requireAdapter(n, `opts.adapterNames[${i}]`));
    names = o.adapterNames;
  }
  const noBias = names.filter((n) => host.loraBBias.has(n) && !host.bias);
  if (noBias.length)
    throw new AdapterError(`merge: adapter(s) ${noBias.join(', ')} have a lora_B bias but ${host.kind} has no base bias to merge it into`);
  const todo = names.filter((n, i) => !host.merged.includes(n) && names.indexOf(n) === i);
  // Exact records cover W only: adapters with a lora_B bias merge through the plain path.
  const exactOk = exact && todo.every((n) => !host.loraBBias.has(n));
  if (exactOk && !safe) {
    yield* exactSteps(host, [], todo);
    return;
  }
  for (const name of todo) {
    const W = host.weight;
    const bB = host.loraBBias.get(name);
    const what = `adapter '${name}'`;
    if (safe) {
      const trial = W.clone();
      try {
        if (exactOk) yield* exactSteps(host, [], [name], trial);
        else yield* host.deltaSteps(name, 1, W, trial);
        if (!(yield step('allFinite', trial.handle)))
          throw new LoraRangeError(`merge: NaNs or infinities detected in the merged weight for adapter '${name}'; the weight was left unchanged`);
        if (bB) yield* biasDeltaSteps(host.bias!, bB, host.scaling(name), true, what);
        yield step('convert', trial.handle, W.handle);
      } catch (e) {
        if (exactOk && host.merged[host.merged.length - 1] === name) {
          host.merged.pop();
          host.records.delete(name);
        }
        throw e;
      } finally {
        trial.dispose();
      }
      if (!exactOk) host.merged.push(name);
    } else {
      yield* host.deltaSteps(name, 1, W, W);
      if (bB) yield* biasDeltaSteps(host.bias!, bB, host.scaling(name), false, what);
      host.merged.push(name);
    }
  }
}

/** unmerge(): merges undone in reverse order, exact ones from their records (bit for bit), others as W -= ΔW. */
export function* floatUnmergeSteps(host: FloatMergeHost): KernelSteps<void> {
  const merged = host.merged;
  while (merged.length > 0) {
    const run: string[] = []; // the newest exactly merged adapters, undone in one pass
    for (let k = merged.length - 1; k >= 0 && host.records.has(merged[k]); k--) run.push(merged[k]);
    if (run.length > 0) {
      yield* exactSteps(host, run, []);
      continue;
    }
    const name = merged[merged.length - 1];
    yield* host.deltaSteps(name, -1, host.weight, host.weight);
    const bB = host.loraBBias.get(name);
    if (bB) yield* biasDeltaSteps(host.bias!, bB, -host.scaling(name), false, `adapter '${name}'`);
    merged.pop(); // only once W is restored, so a failed step can be retried
  }
}

/**
 * switchMerged(names): one exact pass (undo the merged, newest first, then merge names) when every
 * merged adapter was merged exactly; otherwise the layer's unmerge, then merge({ adapterNames: names }).
 */
export function* floatSwitchSteps(host: FloatMergeHost, names: readonly string[]): KernelSteps<void> {
  if (!Array.isArray(names)) throw new LoraTypeError('names: expected an array of adapter names');
  names.forEach((n, i) => host.requireAdapter(n, `names[${i}]`));
  if (new Set(names).size !== names.length) throw new AdapterError(`names: duplicate adapter names in [${names.join(', ')}]`);
  if (host.merged.some((n) => !host.records.has(n)) || names.some((n) => host.loraBBias.has(n))) {
    yield* host.unmergeSteps();
    yield* floatMergeSteps(host, { adapterNames: [...names] });
    return;
  }
  yield* exactSteps(host, [...host.merged].reverse(), names, host.weight);
}

/** Exact undo of `undo` (newest first), then exact merges of `merge` (exact_merge.ts exactChainSteps). */
function* exactSteps(host: FloatMergeHost, undo: readonly string[], merge: readonly string[], target: Tensor = host.weight): KernelSteps<void> {
  yield* exactChainSteps(
    {
      records: host.records,
      merged: host.merged,
      fanInFanOut: host.fanInFanOut,
      isDora: (n) => host.isDora(n),
      operands: (n, norm): ExactOperands => {
        const scale = host.scaling(n);
        if (!Number.isFinite(scale)) throw new LoraRangeError(`scaling of adapter '${n}' is not finite (${scale})`);
        const { A, B, magnitude } = host.factors(n);
        return { A, B, scale, magnitude, norm };
      },
      doraNormSteps: (n, W) => host.doraNormSteps(n, W),
    },
    undo,
    merge,
    target,
  );
}
