/** Mixed-adapter batches (peft's adapter_names argument): which adapter each entry of a batch runs. */
import { AdapterError, LoraTypeError, ShapeError, StateError } from '../errors';
import { KernelSteps, step } from '../exec';
import { Tensor } from '../tensor';
import { LinearHost } from './linear_host';

/** The layer state the check reads (LoraLayer's public getters). */
export interface MixedBatchLayer {
  readonly training: boolean;
  readonly merged: boolean;
  readonly useDora: ReadonlyMap<string, boolean>;
}

/**
 * Validates a mixed batch: one name per entry of x's first dimension, '__base__' for the base
 * layer alone. Returns the distinct adapters used and, per entry, the index into them (-1: base).
 */
export function resolveMixedBatch(
  names: unknown,
  batch: number,
  layer: MixedBatchLayer,
  requireAdapter: (name: unknown, argName: string) => string,
): { adapters: string[]; index: Int32Array } {
  if (!Array.isArray(names)) throw new LoraTypeError('opts.adapterNames: expected an array of adapter names');
  if (layer.training) throw new StateError('opts.adapterNames: mixed-adapter batches need eval mode (call eval() first), as in peft');
  if (layer.merged) throw new StateError('opts.adapterNames: cannot mix adapters while some are merged; unmerge() first');
  if (names.length !== batch)
    throw new ShapeError(`opts.adapterNames: expected ${batch} names (one per entry of x's first dimension), got ${names.length}`);
  const adapters: string[] = [];
  const index = new Int32Array(batch);
  // Each distinct name is checked once (a serving batch repeats a few names thousands of times).
  const seen = new Map<unknown, number>();
  for (let i = 0; i < batch; i++) {
    const n: unknown = names[i];
    let k = seen.get(n);
    if (k === undefined) {
      if (n === '__base__') {
        k = -1;
      } else {
        const name = requireAdapter(n, `opts.adapterNames[${i}]`);
        if (layer.useDora.get(name))
          throw new AdapterError(`opts.adapterNames[${i}]: DoRA adapter '${name}' cannot be used in a mixed batch (as in peft)`);
        k = adapters.push(name) - 1;
      }
      seen.set(n, k);
    }
    index[i] = k;
  }
  return { adapters, index };
}

/** Per row of x (rows = x.numel / in), the adapter index of its batch entry; all -1 (base) with adapters disabled. */
export function rowAdapterIndex(perEntry: Int32Array, rows: number, disabled: boolean): Int32Array {
  if (disabled) return new Int32Array(rows).fill(-1);
  const rowsPerEntry = rows / perEntry.length;
  if (rowsPerEntry === 1) return perEntry;
  const out = new Int32Array(rows);
  perEntry.forEach((a, i) => out.fill(a, i * rowsPerEntry, (i + 1) * rowsPerEntry));
  return out;
}

/**
 * LoraLinear's mixed batch in one native pass: rows grouped per adapter, y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ
 * with that row's adapter as one GEMM (peft's _mixed_batch_forward); a quantized base dequantised.
 */
export function* mixedLinearForwardSteps(host: LinearHost, x: Tensor, adapters: string[], perEntry: Int32Array): KernelSteps<Tensor> {
  const rowAdapter = rowAdapterIndex(perEntry, x.numel / host.inFeatures, host.disableAdapters);
  const y = Tensor.zeros([...x.shape.slice(0, -1), host.outFeatures], { dtype: x.dtype, device: host.device });
  try {
    const factors = adapters.map(
      (n) => [host.loraA.get(n)!.handle, host.loraB.get(n)!.handle, host.scaling.get(n)!] as [Tensor['handle'], Tensor['handle'], number],
    );
    const base = yield* host.floatBaseSteps(x.dtype);
    try {
      yield step('mixedLinearForward', x.handle, base.handle, host.bias?.handle ?? null, host.fanInFanOut, factors, rowAdapter, y.handle);
    } finally {
      host.freeFloatBase(base);
    }
  } catch (e) {
    y.dispose();
    throw e;
  }
  return y;
}
