/**
 * Exact merge and unmerge for LoraLayer (the algorithm and record format: native/core/exact_format.h).
 * A merge records, per merged adapter, the side information that undoes its rounding bit for bit:
 * per weight x with delta d (f32), x' = round(x + d) and c = key(x) − key(round(x' − d)), mostly 0,
 * kept in ~1–2 bits per weight (an i32 record tensor on the weight's device). Unmerge recomputes
 * round(x' − d) with the same d and applies c, so W comes back exactly. DoRA (x' = round(k·(x + d)))
 * records against round(x'/k − d) with the norm its merge used. peft's merge/unmerge (W ± ΔW) has no
 * such record and drifts by a rounding per cycle.
 *
 * One native pass runs a chain: the undo steps (newest merge first), then merge steps. Passes break
 * before each DoRA merge step, whose weight norm needs the weight as it stands before that step.
 */
import { KernelSteps, step } from '../exec';
import { ExactStepArg, NativeTensorHandle } from '../native';
import { Tensor } from '../tensor';

/** One adapter's operands of an exact step (A and B as the layer's mergeDelta takes them). */
export interface ExactOperands {
  A: Tensor;
  B: Tensor;
  scale: number;
  /** DoRA: the magnitude vector and the f32 weight norm [out] of this merge (kept for its undo). */
  magnitude: Tensor | null;
  norm: Tensor | null;
}

interface ExactRecord {
  record: Tensor;
  norm: Tensor | null;
}

/** The records of a layer's exactly merged adapters, by adapter name. */
export class ExactRecords {
  readonly #records = new Map<string, ExactRecord>();

  has(name: string): boolean {
    return this.#records.has(name);
  }

  /** Bytes held: the records plus the DoRA norms their undo needs. */
  get bytes(): number {
    let n = 0;
    for (const r of this.#records.values()) n += r.record.numel * 4 + (r.norm ? r.norm.numel * 4 : 0);
    return n;
  }

  norm(name: string): Tensor | null {
    return this.#records.get(name)?.norm ?? null;
  }

  set(name: string, record: Tensor, norm: Tensor | null): void {
    this.delete(name);
    this.#records.set(name, { record, norm });
  }

  /** Frees one adapter's record (after its undo, or when a merge is abandoned). */
  delete(name: string): void {
    const r = this.#records.get(name);
    if (!r) return;
    r.record.dispose();
    r.norm?.dispose();
    this.#records.delete(name);
  }

  clear(): void {
    for (const name of [...this.#records.keys()]) this.delete(name);
  }

  record(name: string): Tensor {
    const r = this.#records.get(name);
    if (!r) throw new Error(`internal: no exact-merge record for adapter '${name}'`);
    return r.record;
  }
}

export interface ExactStepSpec {
  name: string;
  ops: ExactOperands;
}

function stepArg(ops: ExactOperands, record: Tensor | null): ExactStepArg {
  return [ops.A.handle, ops.B.handle, ops.scale, ops.magnitude?.handle ?? null, ops.norm?.handle ?? null, record?.handle ?? null];
}

/**
 * One pass over W: undo[i] (in the order given: newest merge first) are undone with their records,
 * then merge[i] are merged in order. After the pass the undone adapters' records are freed and each
 * merged adapter's record (and DoRA norm) is stored; a failed pass changes no record.
 */
export function* exactPassSteps(
  W: Tensor,
  fanInFanOut: boolean,
  undo: readonly ExactStepSpec[],
  merge: readonly ExactStepSpec[],
  records: ExactRecords,
): KernelSteps<void> {
  const undoArgs = undo.map((u) => stepArg(u.ops, records.record(u.name)));
  const mergeArgs = merge.map((m) => stepArg(m.ops, null));
  const handles = (yield step('exactMerge', W.handle, fanInFanOut, undoArgs, mergeArgs)) as NativeTensorHandle[];
  const made = handles.map((h) => Tensor.adopt(h, [h.byteLength() / 4], 'i32', W.device));
  for (const u of undo) records.delete(u.name);
  merge.forEach((m, i) => records.set(m.name, made[i], m.ops.norm));
}

/** What exactChainSteps needs of a layer. */
export interface ExactChainHost {
  records: ExactRecords;
  /** The layer's merged adapters, oldest first; updated as passes complete. */
  merged: string[];
  fanInFanOut: boolean;
  isDora(name: string): boolean;
  operands(name: string, norm: Tensor | null): ExactOperands;
  /** DoRA: the f32 weight norm of W as it stands, for the adapter's merge. */
  doraNormSteps(name: string, W: Tensor): KernelSteps<Tensor>;
}

/**
 * Undoes `undo` (the newest merges, newest first) and merges `merge` in order, exactly, in as few
 * passes over target as DoRA allows: a DoRA adapter's norm is taken from the weight just before
 * its merge, so a pass ends before each DoRA adapter that is not its first step.
 */
export function* exactChainSteps(host: ExactChainHost, undo: readonly string[], merge: readonly string[], target: Tensor): KernelSteps<void> {
  let undoSpecs: ExactStepSpec[] = undo.map((n) => ({ name: n, ops: host.operands(n, host.records.norm(n)) }));
  let i = 0;
  while (undoSpecs.length > 0 || i < merge.length) {
    const pass: ExactStepSpec[] = [];
    try {
      while (i < merge.length) {
        const n = merge[i];
        const dora = host.isDora(n);
        if (dora && (pass.length > 0 || undoSpecs.length > 0)) break;
        const ops = host.operands(n, null);
        pass.push({ name: n, ops });
        if (dora) ops.norm = yield* host.doraNormSteps(n, target);
        i++;
      }
      yield* exactPassSteps(target, host.fanInFanOut, undoSpecs, pass, host.records);
    } catch (e) {
      for (const p of pass) p.ops.norm?.dispose();
      throw e;
    }
    host.merged.splice(host.merged.length - undoSpecs.length, undoSpecs.length);
    for (const p of pass) host.merged.push(p.name);
    undoSpecs = [];
  }
}
