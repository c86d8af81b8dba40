/**
 * The options and results of LoraLayer's methods, and the checks of addAdapter's options (peft's
 * LoraLayer.update_layer arguments), kept out of the layer so it holds state and lifecycle only.
 */
import { FloatDType } from '../dtype';
import { AdapterError, LoraRangeError, LoraTypeError, StateError } from '../errors';
import { nextGlobalSeed } from '../rng';
import { Tensor } from '../tensor';
import { checkBool, checkFinite, checkInt, checkScale } from '../validate';
import { InitLoraWeights } from './init';

export interface AdapterOptions {
  /** Rank (peft default 8). */
  r?: number;
  /** Scaling numerator (peft default 8): scaling = loraAlpha / r, or loraAlpha / √r with useRslora. */
  loraAlpha?: number;
  /** Dropout probability on the adapter's input in training mode, in [0, 1). */
  loraDropout?: number;
  useRslora?: boolean;
  /** See InitLoraWeights (default true: a no-op at init). */
  initLoraWeights?: InitLoraWeights;
  /** DoRA (LoraLinear): a magnitude vector [out] rescales each output row by m / ‖W + s·B·A‖. */
  useDora?: boolean;
  /**
   * peft's lora_bias (LoraLinear): lora_B gets a bias b_B [out], so the adapter adds s·(u·Bᵀ + b_B)
   * and a merge adds s·b_B to the base bias. Not with DoRA; init must be true or false.
   */
  loraBias?: boolean;
  /** Seed for the initialisation and the dropout masks (default: from the global generator). */
  seed?: number;
  /** Frozen adapter: forward uses it, backward gives it no gradient. */
  inferenceMode?: boolean;
  /** Storage dtype of A and B (default 'f32', as peft's autocast_adapter_dtype). */
  dtype?: FloatDType;
}

export const ADAPTER_OPTION_KEYS = [
  'r',
  'loraAlpha',
  'loraDropout',
  'useRslora',
  'initLoraWeights',
  'seed',
  'inferenceMode',
  'dtype',
  'useDora',
  'loraBias',
] as const;

/** Where each row of a mixed batch goes: '__base__' runs the base layer alone. */
export interface MixedForwardOptions {
  /** One adapter name (or '__base__') per entry of x's first dimension; eval mode only. */
  adapterNames?: readonly string[];
}

/** LoraLinear.forward's options: a mixed batch, or the output written into a tensor the caller owns. */
export interface LoraLinearForwardOptions extends MixedForwardOptions {
  /**
   * y is written here instead of into a new tensor (and returned): x's dtype, on the layer's
   * device, shape [..., out_features], not x. Saves the per-call allocation; not with adapterNames.
   */
  out?: Tensor;
}

export interface MergeOptions {
  /** Check the merged weight for NaN/Inf before writing it; W is untouched on failure. */
  safeMerge?: boolean;
  /** Adapters to merge (default: the active ones). */
  adapterNames?: string[];
  /**
   * Record the side information that makes unmerge() exact, bit for bit (default true; ~1–2 bits
   * per weight, see mergeSideInfoBytes). false: peft's merge, whose unmerge leaves rounding drift.
   */
  exact?: boolean;
}

export interface AdapterGrads {
  loraA: Tensor;
  loraB: Tensor;
  /** DoRA adapters: dL/dmagnitude [out]. */
  magnitude?: Tensor;
  /** lora_bias adapters: dL/db_B [out] (f32) = s·Σ_rows dy. */
  loraBBias?: Tensor;
}

export interface BackwardResult {
  dx: Tensor;
  grads: Map<string, AdapterGrads>;
  /** dL/dbias [out] (f32) = Σ_rows dy, when the base bias is trainable (peft's bias='all' / 'lora_only'). */
  bias?: Tensor;
}

/** What backward() gives on any layer kind: dx except on LoraEmbedding (indices have no gradient). */
export interface LayerBackwardResult {
  dx?: Tensor;
  grads: Map<string, AdapterGrads>;
}

/** AdapterOptions with every default filled in and checked. */
export interface ResolvedAdapterOptions {
  r: number;
  alpha: number;
  dropout: number;
  useRslora: boolean;
  init: InitLoraWeights;
  useDora: boolean;
  loraBias: boolean;
  seed: number;
  frozen: boolean;
  dtype: FloatDType;
}

/** What the layer kind can do, for the checks that depend on it. */
export interface LayerCapabilities {
  /** The layer's class name, for messages. */
  kind: string;
  supportsDora: boolean;
  /** lora_bias */
  supportsLoraBias: boolean;
  /** pissa / olora */
  supportsWeightInit: boolean;
  merged: boolean;
}

/** Checks addAdapter's options (keys already checked) in a fixed order and fills in peft's defaults. */
export function resolveAdapterOptions(o: AdapterOptions, layer: LayerCapabilities): ResolvedAdapterOptions {
  const r = checkInt(o.r ?? 8, 'opts.r', 1, 1 << 20);
  const alpha = checkScale(o.loraAlpha ?? 8, 'opts.loraAlpha');
  const dropout = checkFinite(o.loraDropout ?? 0, 'opts.loraDropout');
  if (dropout < 0 || dropout >= 1) throw new LoraRangeError(`opts.loraDropout: expected 0 <= p < 1, got ${dropout}`);
  const useRslora = o.useRslora === undefined ? false : checkBool(o.useRslora, 'opts.useRslora');
  const init = o.initLoraWeights ?? true;
  if (init !== true && init !== false && init !== 'gaussian' && init !== 'pissa' && init !== 'olora')
    throw new LoraTypeError(`opts.initLoraWeights: expected true, false, 'gaussian', 'pissa' or 'olora', got ${String(init)}`);
  const useDora = o.useDora === undefined ? false : checkBool(o.useDora, 'opts.useDora');
  if (useDora && !layer.supportsDora) throw new AdapterError(`opts.useDora: DoRA is supported on LoraLinear only, not on ${layer.kind}`);
  if ((init === 'pissa' || init === 'olora') && !layer.supportsWeightInit)
    throw new AdapterError(`opts.initLoraWeights: '${init}' is supported on LoraLinear only, not on ${layer.kind}`);
  if ((init === 'pissa' || init === 'olora') && layer.merged)
    throw new StateError(`opts.initLoraWeights: '${init}' rewrites the base weight; unmerge() first`);
  const loraBias = o.loraBias === undefined ? false : checkBool(o.loraBias, 'opts.loraBias');
  if (loraBias && !layer.supportsLoraBias) throw new AdapterError(`opts.loraBias: lora_bias is supported on LoraLinear only, not on ${layer.kind}`);
  if (loraBias && useDora) throw new AdapterError('opts.loraBias: cannot be combined with useDora (as in peft)');
  if (loraBias && init !== true && init !== false)
    throw new AdapterError(`opts.loraBias: needs initLoraWeights true or false (as in peft), got ${String(init)}`);
  const seed = o.seed === undefined ? nextGlobalSeed() : checkInt(o.seed, 'opts.seed', 0);
  const frozen = o.inferenceMode === undefined ? false : checkBool(o.inferenceMode, 'opts.inferenceMode');
  const dtype = o.dtype ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'f16' && dtype !== 'bf16')
    throw new LoraTypeError(`opts.dtype: expected 'f32', 'f16' or 'bf16', got ${String(dtype)}`);
  return { r, alpha, dropout, useRslora, init, useDora, loraBias, seed, frozen, dtype };
}

/** The dropout masks' generator state: each adapter's seed and the layer's forward counter (a mask depends on both). */
export interface LayerRngState {
  seeds: Record<string, number>;
  counter: number;
}

/** Checks a LayerRngState; requireAdapter names a seed's adapter or throws. */
export function checkRngState(s: unknown, requireAdapter: (name: string) => string): { seeds: Array<readonly [string, number]>; counter: number } {
  const st = s as LayerRngState;
  if (st === null || typeof st !== 'object' || typeof st.seeds !== 'object' || st.seeds === null)
    throw new LoraTypeError('state: expected { seeds, counter } from rngState()');
  const counter = checkInt(st.counter, 'state.counter', 0);
  const seeds = Object.entries(st.seeds).map(([n, v]) => [requireAdapter(n), checkInt(v, `state.seeds['${n}']`, 0)] as const);
  return { seeds, counter };
}
