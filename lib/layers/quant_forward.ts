/**
 * LoraLinear's training forward over a quantized base when adapters see dropout (their input is
 * drop(x), not x, so quantLoraForward's fused shrink does not apply): the base and bias through
 * quantLoraForward with no adapter (W dequantised inside the GEMM, never as a full copy), then each
 * adapter's expand u·Bᵀ into one f32 scratch and y += s·(u·Bᵀ) in f32. Needs an f32 y, and B's
 * dtype accepted beside an f32 u (addsExpandsInF32); otherwise the layer runs the float path on a
 * dequantised copy.
 */
import { mixedDtypes } from '../backend';
import { DType, Device } from '../dtype';
import { KernelSteps, step } from '../exec';
import { NativeTensorHandle } from '../native';
import { QuantizedTensor } from '../quantized_tensor';
import { Tensor } from '../tensor';

export interface ExpandTerm {
  u: Tensor;
  B: Tensor;
  scale: number;
}

/** Whether quantBaseThenExpandsSteps can run: y in f32, and every B usable in an f32 call on the device. */
export function addsExpandsInF32(yDtype: DType, device: Device, terms: readonly ExpandTerm[]): boolean {
  return yDtype === 'f32' && terms.every((t) => t.u.dtype === 'f32' && (t.B.dtype === 'f32' || mixedDtypes(device)));
}

/** y = x·deq(W)ᵀ + bias + Σ s·u·Bᵀ (y f32, its shape [..., out]). */
export function* quantBaseThenExpandsSteps(x: Tensor, q: QuantizedTensor, bias: NativeTensorHandle | null, terms: readonly ExpandTerm[], y: Tensor): KernelSteps<void> {
  yield step('quantLoraForward', x.handle, q.storage.handle, q.spec, bias, [], y.handle);
  const tmp = Tensor.empty(y.shape, { dtype: 'f32', device: y.device });
  try {
    for (const t of terms) {
      yield step('linearForward', t.u.handle, t.B.handle, null, false, [], tmp.handle);
      yield step('accumulate', y.handle, tmp.handle, t.scale);
    }
  } finally {
    tmp.dispose();
  }
}
