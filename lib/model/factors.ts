/**
 * The facts about LoRA factors every part of lorakit shares, kept in one place: the scaling
 * (peft's LoraLayer.update_layer: s = lora_alpha / r, or lora_alpha / √r with use_rslora), the
 * shapes of lora_A / lora_B for a module kind (peft's layer constructors), and the reverse: the
 * module kind a pair of factors means for a base weight (what peft knows from the module's class).
 * No imports: layers, the model, adapter I/O and the streaming merge all use it.
 */

/** Module kinds that take LoRA. A weight is [out, in] (linear), [in, out] (conv1d, GPT-2's
 * fan_in_fan_out), [num, dim] (embedding) or [out, in/groups, kh, kw] (conv2d). */
export type LoraKind = 'linear' | 'conv1d' | 'embedding' | 'conv2d';

/** peft's scaling: alpha / r, or alpha / √r (rsLoRA). */
export function loraScaling(alpha: number, r: number, useRslora: boolean): number {
  return useRslora ? alpha / Math.sqrt(r) : alpha / r;
}

/** Number of dimensions of the base weight of each kind. */
export const WEIGHT_RANK: Readonly<Record<LoraKind, number>> = { linear: 2, conv1d: 2, embedding: 2, conv2d: 4 };

/**
 * lora_A and lora_B shapes of rank r as peft stores them: linear A [r, in], B [out, r]; conv1d
 * the same with W's axes swapped; embedding A [r, num], B [dim, r] (lora_embedding_A/B); conv2d A
 * [r, in, kh, kw], B [out, r/groups, 1, 1].
 */
export function factorShapes(kind: LoraKind, weight: readonly number[], r: number, groups = 1): { A: number[]; B: number[] } {
  switch (kind) {
    case 'linear':
      return { A: [r, weight[1]], B: [weight[0], r] };
    case 'conv1d':
    case 'embedding':
      return { A: [r, weight[0]], B: [weight[1], r] };
    case 'conv2d':
      return { A: [r, weight[1] * groups, weight[2], weight[3]], B: [weight[0], r / groups, 1, 1] };
  }
}

/** Whether A and B are exactly the factors of some rank (A's first dimension) for a weight of this kind. */
export function factorsFit(kind: LoraKind, weight: readonly number[], A: readonly number[], B: readonly number[], groups = 1): boolean {
  if (weight.length !== WEIGHT_RANK[kind] || A.length === 0) return false;
  const want = factorShapes(kind, weight, A[0], groups);
  return want.A.join() === A.join() && want.B.join() === B.join();
}

/** What a module's saved factors look like: their shapes, and whether they were saved as lora_embedding_A/B. */
export interface FactorShapes {
  A: readonly number[];
  B: readonly number[];
  embedding: boolean;
}

/**
 * The module kind the factors mean for a base weight: embedding when saved as lora_embedding_*,
 * conv2d when A is 4-D, otherwise linear when A·(in) and B·(out) fit W [out, in], conv1d when they
 * fit W [in, out]. A square weight fits both; preferConv1d decides (peft's fan_in_fan_out).
 * null: a 2-D pair that fits neither layout (the caller's shape check reports it).
 */
export function kindFromFactors(weight: readonly number[], f: FactorShapes, preferConv1d: boolean): LoraKind | null {
  if (f.embedding) return 'embedding';
  if (f.A.length === 4) return 'conv2d';
  const fitsLinear = weight[1] === f.A[1] && weight[0] === f.B[0];
  const fitsConv1d = weight[0] === f.A[1] && weight[1] === f.B[0];
  if (fitsLinear && fitsConv1d) return preferConv1d ? 'conv1d' : 'linear';
  if (fitsLinear) return 'linear';
  if (fitsConv1d) return 'conv1d';
  return null;
}
