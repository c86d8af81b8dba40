/**
 * The bias terms of a LoRA layer, as kernel-step bodies (exec.ts) the layers yield from, the same on
 * every device:
 * - peft's lora_bias: lora_B has a bias b_B, so the adapter adds s·b_B to every output row; the
 *   forward folds it into one bias b + Σ s·b_B, merge adds s·b_B to the base bias, backward gives
 *   d b_B = s·Σ_rows dy;
 * - peft's bias='all' / 'lora_only': the base bias is trainable, d b = Σ_rows dy.
 */
import { mixedDtypes } from '../backend';
import { DType, Device } from '../dtype';
import { LoraRangeError } from '../errors';
import { KernelSteps, step } from '../exec';
import { Tensor } from '../tensor';

/**
 * b + Σ scale·b_B as one bias for a forward call, in f32 (or in `callDtype` on a backend whose calls
 * take one dtype). The caller owns the result.
 */
export function* foldedBiasSteps(
  bias: Tensor | null,
  terms: ReadonlyArray<readonly [Tensor, number]>,
  outFeatures: number,
  device: Device,
  callDtype: DType,
): KernelSteps<Tensor> {
  const acc = Tensor.zeros([outFeatures], { dtype: 'f32', device });
  try {
    if (bias) yield step('accumulate', acc.handle, bias.handle, 1);
    for (const [bB, s] of terms) yield step('accumulate', acc.handle, bB.handle, s);
    if (mixedDtypes(device) || callDtype === 'f32') return acc;
    const out = Tensor.empty([outFeatures], { dtype: callDtype, device });
    try {
      yield step('convert', acc.handle, out.handle);
    } catch (e) {
      out.dispose();
      throw e;
    }
    acc.dispose();
    return out;
  } catch (e) {
    acc.dispose();
    throw e;
  }
}

/**
 * bias += scale·b_B in place (peft's merge: `base_layer.bias += lora_B.bias · scaling`; unmerge
 * passes −scaling), summed in f32 and rounded once to the bias's dtype. With check, a result that
 * is not finite leaves the bias unchanged and throws.
 */
export function* biasDeltaSteps(bias: Tensor, bB: Tensor, scale: number, check: boolean, what: string): KernelSteps<void> {
  const acc = Tensor.zeros(bias.shape, { dtype: 'f32', device: bias.device });
  try {
    yield step('accumulate', acc.handle, bias.handle, 1);
    yield step('accumulate', acc.handle, bB.handle, scale);
    if (check && !(yield step('allFinite', acc.handle)))
      throw new LoraRangeError(`merge: NaNs or infinities detected in the merged bias for ${what}; the bias was left unchanged`);
    yield step('convert', acc.handle, bias.handle);
  } finally {
    acc.dispose();
  }
}

/** alpha·Σ over the rows of dy [..., out] as a new f32 [out] tensor (a bias gradient). */
export function* columnSumSteps(dy: Tensor, alpha: number): KernelSteps<Tensor> {
  const out = Tensor.empty([dy.shape[dy.shape.length - 1]], { dtype: 'f32', device: dy.device });
  try {
    yield step('columnSum', dy.handle, alpha, out.handle);
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}
