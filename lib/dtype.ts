/** Element types and devices. 16-bit floats are storage types: kernels compute in f32. */
export type FloatDType = 'f32' | 'f16' | 'bf16';
export type IntDType = 'i32' | 'i64';
export type DType = FloatDType | IntDType;
export type Device = 'cpu' | 'cuda';

export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i32', 'i64'];
export const DEVICES: readonly Device[] = ['cpu', 'cuda'];

export function isFloatDType(d: DType): d is FloatDType {
  return d === 'f32' || d === 'f16' || d === 'bf16';
}

export function dtypeSize(d: DType): number {
  return d === 'i64' ? 8 : d === 'f32' || d === 'i32' ? 4 : 2;
}
