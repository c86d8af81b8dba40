/** Conversions between lorakit Tensors and the raw little-endian bytes safetensors stores. */
import { DType } from '../dtype';
import { LoraTypeError } from '../errors';
import { Tensor } from '../tensor';

export const ELEMENT_SIZE: Record<string, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1, U16: 2, U32: 4, U64: 8,
  F8_E4M3: 1, F8_E5M2: 1,
};

export const SAFETENSORS_TO_DTYPE: Record<string, DType> = { F32: 'f32', F16: 'f16', BF16: 'bf16', I32: 'i32', I64: 'i64' };
export const DTYPE_TO_SAFETENSORS: Record<DType, string> = { f32: 'F32', f16: 'F16', bf16: 'BF16', i32: 'I32', i64: 'I64' };

/** An aligned copy of `bytes` (typed-array views need their element alignment). */
function aligned(bytes: Uint8Array, align: number): Uint8Array {
  return bytes.byteOffset % align === 0 ? bytes : new Uint8Array(bytes);
}

/** A native Tensor from raw bytes of a safetensors dtype lorakit holds (F32, F16, BF16, I32, I64). */
export function tensorFromBytes(bytes: Uint8Array, stDtype: string, shape: readonly number[], name = 'tensor'): Tensor {
  const dtype = SAFETENSORS_TO_DTYPE[stDtype];
  if (!dtype) throw new LoraTypeError(`${name}: dtype ${stDtype} is not one lorakit tensors hold (F32, F16, BF16, I32, I64)`);
  const b = aligned(bytes, ELEMENT_SIZE[stDtype]);
  switch (dtype) {
    case 'f32':
      return Tensor.from(new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4), shape);
    case 'f16':
    case 'bf16':
      return Tensor.from(new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2), shape, { dtype });
    case 'i32':
      return Tensor.from(new Int32Array(b.buffer, b.byteOffset, b.byteLength / 4), shape);
    case 'i64':
      return Tensor.from(new BigInt64Array(b.buffer, b.byteOffset, b.byteLength / 8), shape);
  }
}

/** The raw bytes and safetensors dtype of a Tensor (a copy out of native memory). */
export function tensorToBytes(t: Tensor): { dtype: string; bytes: Uint8Array } {
  let view: ArrayBufferView;
  switch (t.dtype) {
    case 'f32':
      view = t.toFloat32Array();
      break;
    case 'f16':
    case 'bf16':
      view = t.toUint16Array();
      break;
    case 'i32':
      view = t.toInt32Array();
      break;
    case 'i64':
      view = t.toBigInt64Array();
      break;
  }
  return { dtype: DTYPE_TO_SAFETENSORS[t.dtype], bytes: new Uint8Array(view.buffer, view.byteOffset, view.byteLength) };
}

/** Float32 values from raw float bytes (F32, F16, BF16, F64). */
export function float32FromBytes(bytes: Uint8Array, stDtype: string, name = 'tensor'): Float32Array {
  if (stDtype === 'F32') {
    const b = aligned(bytes, 4);
    return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  }
  if (stDtype === 'F64') {
    const b = aligned(bytes, 8);
    return Float32Array.from(new Float64Array(b.buffer, b.byteOffset, b.byteLength / 8));
  }
  if (stDtype === 'F16' || stDtype === 'BF16') {
    const t = tensorFromBytes(bytes, stDtype, [bytes.byteLength / 2], name);
    try {
      return t.toFloat32Array();
    } finally {
      t.dispose();
    }
  }
  throw new LoraTypeError(`${name}: dtype ${stDtype} is not a float type`);
}
