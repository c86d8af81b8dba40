/**
 * What a device's backend asks of its callers (native/core/backend.h), so that layers and kernels
 * never branch on the device: the dtype of the LoRA shrink output u = x·Aᵀ (f32 on the cpu, x's
 * dtype on cuda) and whether one call may mix float dtypes. Each answer is asked once.
 */
import { DType, Device, FloatDType } from './dtype';
import { DTypeError } from './errors';
import { call } from './native';

const scratch = new Map<string, FloatDType>();
const mixed = new Map<Device, boolean>();

/** The dtype of the shrink output u = x·Aᵀ on the device for activations of dtype x. */
export function scratchDtype(device: Device, x: DType): FloatDType {
  const key = `${device}:${x}`;
  let d = scratch.get(key);
  if (d === undefined) {
    d = call((b) => b.scratchDtype(device, x)) as FloatDType;
    scratch.set(key, d);
  }
  return d;
}

/** False when a call on the device takes one float dtype for activations, weights and outputs. */
export function mixedDtypes(device: Device): boolean {
  let m = mixed.get(device);
  if (m === undefined) {
    m = call((b) => b.mixedDtypes(device));
    mixed.set(device, m);
  }
  return m;
}

/** DTypeError unless a tensor of dtype `got` can join a call on the device whose weight has dtype `want`. */
export function requireCallDtype(device: Device, got: DType, want: DType, name: string, what = "the weight's dtype"): void {
  if (got !== want && !mixedDtypes(device)) throw new DTypeError(`${name}: on ${device}, expected ${what} ${want}, got ${got}`);
}
