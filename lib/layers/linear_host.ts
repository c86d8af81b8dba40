/**
 * What the helpers of LoraLinear (linear_dora.ts, mixed_batch.ts) read of it: its public views and
 * a few of its own lookups, each read when used (LoraLinear builds the object once).
 */
import { DType, Device } from '../dtype';
import { KernelSteps } from '../exec';
import { Tensor } from '../tensor';

export interface LinearHost {
  readonly device: Device;
  readonly fanInFanOut: boolean;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly bias: Tensor | null;
  readonly training: boolean;
  readonly disableAdapters: boolean;
  readonly r: ReadonlyMap<string, number>;
  readonly scaling: ReadonlyMap<string, number>;
  readonly loraDropout: ReadonlyMap<string, number>;
  readonly loraA: ReadonlyMap<string, Tensor>;
  readonly loraB: ReadonlyMap<string, Tensor>;
  readonly loraMagnitude: ReadonlyMap<string, Tensor>;
  seed(name: string): number;
  frozen(name: string): boolean;
  requireAdapter(name: unknown, argName: string): string;
  /** The base as a float Tensor in dtype: the weight itself, or a dequantised copy freeFloatBase frees. */
  floatBaseSteps(dtype: DType): KernelSteps<Tensor>;
  freeFloatBase(W: Tensor): void;
}
