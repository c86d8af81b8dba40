/**
 * LoraConfig in camelCase, and its peft adapter_config.json form (peft 0.21's snake_case keys).
 * Fields lorakit does not implement must keep their defaults: a file that sets them is refused with
 * a clear error rather than loaded with different behaviour.
 */
import { AdapterError, LoraRangeError, LoraTypeError } from '../errors';
import { checkBool, checkFinite, checkOptions, checkScale } from '../validate';

export type BiasMode = 'none' | 'all' | 'lora_only';

export interface LoraConfig {
  r?: number;
  /** A list (exact name or '.'-suffix), a regex string (full match), or 'all-linear'. */
  targetModules?: string[] | string | null;
  excludeModules?: string[] | string | null;
  loraAlpha?: number;
  loraDropout?: number;
  /** Ignored for targeting: linear modules use false, conv1d modules true (as peft forces). */
  fanInFanOut?: boolean;
  bias?: BiasMode;
  useRslora?: boolean;
  initLoraWeights?: boolean | 'gaussian';
  /** DoRA (linear and conv1d modules): a magnitude vector per output feature. */
  useDora?: boolean;
  /** peft's lora_bias: lora_B gets a bias b_B, so the adapter adds s·(u·Bᵀ + b_B) (linear and conv1d; not with DoRA). */
  loraBias?: boolean;
  /**
   * peft's modules_to_save: modules (exact name or '.'-suffix) that get a fully trainable copy per
   * adapter, used while that adapter is active and saved with it (a classifier head, a norm).
   */
  modulesToSave?: string[] | null;
  layersToTransform?: number | number[] | null;
  layersPattern?: string | string[] | null;
  rankPattern?: Record<string, number>;
  alphaPattern?: Record<string, number>;
  taskType?: string | null;
  baseModelNameOrPath?: string | null;
  revision?: string | null;
  /** Frozen adapter (peft's inference_mode): counted, used, not trained. */
  inferenceMode?: boolean;
  /** Seed for the adapter's initialisation (lorakit only; not saved). */
  seed?: number;
  /** Output head(s) that 'all-linear' leaves out (lorakit only; default lm_head, embed_out, score, classifier). */
  outputHead?: string[];
}

export const CONFIG_KEYS = [
  'r', 'targetModules', 'excludeModules', 'loraAlpha', 'loraDropout', 'fanInFanOut', 'bias', 'useRslora',
  'initLoraWeights', 'useDora', 'loraBias', 'modulesToSave', 'layersToTransform', 'layersPattern', 'rankPattern', 'alphaPattern', 'taskType',
  'baseModelNameOrPath', 'revision', 'inferenceMode', 'seed', 'outputHead',
] as const;

/** A config with every field filled in. */
export interface ResolvedLoraConfig {
  r: number;
  targetModules: string[] | string | null;
  excludeModules: string[] | string | null;
  loraAlpha: number;
  loraDropout: number;
  fanInFanOut: boolean;
  bias: BiasMode;
  useRslora: boolean;
  initLoraWeights: boolean | 'gaussian';
  useDora: boolean;
  loraBias: boolean;
  modulesToSave: string[] | null;
  layersToTransform: number | number[] | null;
  layersPattern: string | string[] | null;
  rankPattern: Record<string, number>;
  alphaPattern: Record<string, number>;
  taskType: string | null;
  baseModelNameOrPath: string | null;
  revision: string | null;
  inferenceMode: boolean;
  seed: number | undefined;
  outputHead: string[];
}

export const DEFAULT_OUTPUT_HEADS = ['lm_head', 'embed_out', 'score', 'classifier'];

function stringList(v: unknown, name: string): string[] | string | null {
  if (v === null || v === undefined) return null;
  if (typeof v === 'string') return v;
  if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return [...new Set(v as string[])];
  throw new LoraTypeError(`${name}: expected a list of module names, a regex string or null`);
}

function patternMap(v: unknown, name: string): Record<string, number> {
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw new LoraTypeError(`${name}: expected an object { pattern: number }`);
  for (const [k, n] of Object.entries(v)) {
    if (typeof n !== 'number' || !Number.isFinite(n)) throw new LoraTypeError(`${name}['${k}']: expected a number`);
    try {
      new RegExp(k);
    } catch {
      throw new LoraRangeError(`${name}: '${k}' is not a valid regular expression`);
    }
  }
  return { ...(v as Record<string, number>) };
}

export function resolveConfig(config: LoraConfig, argName = 'config'): ResolvedLoraConfig {
  const c = checkOptions(config, CONFIG_KEYS, argName) as LoraConfig;
  const r = c.r ?? 8;
  if (!Number.isInteger(r) || r < 1) throw new LoraRangeError(`${argName}.r: expected a positive integer, got ${String(r)}`);
  const bias = c.bias ?? 'none';
  if (bias !== 'none' && bias !== 'all' && bias !== 'lora_only') throw new LoraTypeError(`${argName}.bias: expected 'none', 'all' or 'lora_only', got ${String(bias)}`);
  const targetModules = stringList(c.targetModules, `${argName}.targetModules`);
  if (targetModules === null)
    throw new AdapterError(`${argName}.targetModules: required (lorakit has no per-architecture defaults); e.g. ['q_proj', 'v_proj'] or 'all-linear'`);
  let layers = c.layersToTransform ?? null;
  if (layers !== null) {
    const list = typeof layers === 'number' ? [layers] : layers;
    if (!Array.isArray(list) || list.some((i) => !Number.isInteger(i) || i < 0))
      throw new LoraTypeError(`${argName}.layersToTransform: expected a layer index or a list of them`);
    if (typeof targetModules === 'string' && targetModules !== 'all-linear')
      throw new LoraRangeError(`${argName}.layersToTransform: cannot be combined with a regex targetModules (as in peft)`);
    layers = typeof layers === 'number' ? layers : [...list];
  }
  const pattern = c.layersPattern ?? null;
  if (pattern !== null && layers === null) throw new LoraRangeError(`${argName}.layersPattern: needs layersToTransform`);
  const init = c.initLoraWeights ?? true;
  if (init !== true && init !== false && init !== 'gaussian')
    throw new LoraTypeError(`${argName}.initLoraWeights: expected true, false or 'gaussian', got ${String(init)}`);
  // Types the layers rely on, checked here so a bad adapter_config.json fails at load, naming its key.
  if (c.loraAlpha !== undefined) checkScale(c.loraAlpha, `${argName}.loraAlpha`);
  const dropout = c.loraDropout === undefined ? 0 : checkFinite(c.loraDropout, `${argName}.loraDropout`);
  if (dropout < 0 || dropout >= 1) throw new LoraRangeError(`${argName}.loraDropout: expected 0 <= p < 1, got ${dropout}`);
  for (const key of ['fanInFanOut', 'useRslora', 'inferenceMode', 'useDora', 'loraBias'] as const) if (c[key] !== undefined) checkBool(c[key], `${argName}.${key}`);
  if (c.loraBias && c.useDora) throw new AdapterError(`${argName}.loraBias: cannot be combined with useDora (as in peft)`);
  if (c.loraBias && init !== true && init !== false)
    throw new AdapterError(`${argName}.loraBias: needs initLoraWeights true or false (as in peft), got ${String(init)}`);
  const modulesToSave = stringList(c.modulesToSave, `${argName}.modulesToSave`);
  if (typeof modulesToSave === 'string') throw new LoraTypeError(`${argName}.modulesToSave: expected a list of module names`);
  for (const key of ['taskType', 'baseModelNameOrPath', 'revision'] as const)
    if (c[key] !== undefined && c[key] !== null && typeof c[key] !== 'string') throw new LoraTypeError(`${argName}.${key}: expected a string or null`);
  return {
    r,
    targetModules,
    excludeModules: stringList(c.excludeModules, `${argName}.excludeModules`),
    loraAlpha: c.loraAlpha ?? 8,
    loraDropout: c.loraDropout ?? 0,
    fanInFanOut: c.fanInFanOut ?? false,
    bias,
    useRslora: c.useRslora ?? false,
    initLoraWeights: init,
    useDora: c.useDora ?? false,
    loraBias: c.loraBias ?? false,
    modulesToSave,
    layersToTransform: layers,
    layersPattern: typeof pattern === 'string' || pattern === null ? pattern : [...pattern],
    rankPattern: patternMap(c.rankPattern, `${argName}.rankPattern`),
    alphaPattern: patternMap(c.alphaPattern, `${argName}.alphaPattern`),
    taskType: c.taskType ?? null,
    baseModelNameOrPath: c.baseModelNameOrPath ?? null,
    revision: c.revision ?? null,
    inferenceMode: c.inferenceMode ?? false,
    seed: c.seed,
    outputHead: c.outputHead ?? DEFAULT_OUTPUT_HEADS,
  };
}

/** The version of peft's file format this writes (the peft release lorakit's golden files come from). */
export const PEFT_FORMAT_VERSION = '0.21.0';

/** adapter_config.json content: peft 0.21's keys, sorted, inference_mode forced to true as peft does. */
export function toPeftJson(c: ResolvedLoraConfig, targetModules: string[] | string): Record<string, unknown> {
  const json: Record<string, unknown> = {
    alora_invocation_tokens: null,
    alpha_pattern: c.alphaPattern,
    arrow_config: null,
    auto_mapping: null,
    base_model_name_or_path: c.baseModelNameOrPath,
    bias: c.bias,
    corda_config: null,
    ensure_weight_tying: false,
    eva_config: null,
    exclude_modules: c.excludeModules,
    fan_in_fan_out: c.fanInFanOut,
    inference_mode: true,
    init_lora_weights: c.initLoraWeights,
    kasa_config: null,
    layer_replication: null,
    layers_pattern: c.layersPattern,
    layers_to_transform: c.layersToTransform,
    loftq_config: {},
    lora_alpha: c.loraAlpha,
    lora_bias: c.loraBias,
    lora_dropout: c.loraDropout,
    lora_ga_config: null,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: c.modulesToSave,
    monteclora_config: null,
    peft_type: 'LORA',
    peft_version: PEFT_FORMAT_VERSION,
    qalora_group_size: 16,
    r: c.r,
    rank_pattern: c.rankPattern,
    revision: c.revision,
    target_modules: targetModules,
    target_parameters: null,
    task_type: c.taskType,
    trainable_token_indices: null,
    use_bdlora: null,
    use_dora: c.useDora,
    use_qalora: false,
    use_rslora: c.useRslora,
    velora_config: null,
  };
  return Object.fromEntries(Object.keys(json).sort().map((k) => [k, json[k]]));
}

/** JSON as Python's json.dumps(indent=2) writes it (floats keep a '.0', as peft's files have). */
export function peftJsonText(json: Record<string, unknown>, floatKeys = ['lora_dropout']): string {
  const text = JSON.stringify(json, null, 2);
  return floatKeys.reduce((t, k) => t.replace(new RegExp(`("${k}": )(-?\\d+)(,?\\n)`), '$1$2.0$3'), text);
}

/** Keys that map onto LoraConfig fields. */
const KEY_MAP: Record<string, keyof LoraConfig> = {
  r: 'r',
  target_modules: 'targetModules',
  exclude_modules: 'excludeModules',
  lora_alpha: 'loraAlpha',
  lora_dropout: 'loraDropout',
  fan_in_fan_out: 'fanInFanOut',
  bias: 'bias',
  use_rslora: 'useRslora',
  init_lora_weights: 'initLoraWeights',
  use_dora: 'useDora',
  lora_bias: 'loraBias',
  modules_to_save: 'modulesToSave',
  layers_to_transform: 'layersToTransform',
  layers_pattern: 'layersPattern',
  rank_pattern: 'rankPattern',
  alpha_pattern: 'alphaPattern',
  task_type: 'taskType',
  base_model_name_or_path: 'baseModelNameOrPath',
  revision: 'revision',
  inference_mode: 'inferenceMode',
};

/** peft keys lorakit reads but that change nothing here (bookkeeping, or features left at their defaults). */
const NEUTRAL_DEFAULTS: Record<string, unknown[]> = {
  peft_type: ['LORA'],
  peft_version: [],
  auto_mapping: [],
  megatron_core: [],
  qalora_group_size: [],
  loftq_config: [null, {}],
  use_qalora: [false, null],
  layer_replication: [null],
  trainable_token_indices: [null],
  target_parameters: [null, []],
  megatron_config: [null],
  ensure_weight_tying: [false, null],
  alora_invocation_tokens: [null],
  arrow_config: [null],
  corda_config: [null],
  eva_config: [null],
  kasa_config: [null],
  lora_ga_config: [null],
  monteclora_config: [null],
  velora_config: [null],
  use_bdlora: [null, false],
};

/**
 * Reads adapter_config.json content. Unknown keys are ignored with a warning (as peft ≥ 0.14 does);
 * known features lorakit does not implement (target_parameters, layer_replication, ...) raise.
 */
export function fromPeftJson(json: unknown, source: string, warn: (msg: string) => void = (m) => console.warn(m)): LoraConfig {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new LoraTypeError(`${source}: expected a JSON object`);
  const j = json as Record<string, unknown>;
  if (j.peft_type !== undefined && j.peft_type !== 'LORA') throw new AdapterError(`${source}: peft_type is ${String(j.peft_type)}; lorakit reads LORA adapters only`);
  const out: Record<string, unknown> = {};
  const unknown: string[] = [];
  for (const [k, v] of Object.entries(j)) {
    if (Object.hasOwn(KEY_MAP, k)) {
      if (v !== null) out[KEY_MAP[k]] = v;
    } else if (Object.hasOwn(NEUTRAL_DEFAULTS, k)) {
      const allowed = NEUTRAL_DEFAULTS[k];
      const ok = allowed.length === 0 || allowed.some((a) => JSON.stringify(a) === JSON.stringify(v));
      if (!ok) throw new AdapterError(`${source}: ${k} = ${JSON.stringify(v)} is not supported by lorakit (only ${allowed.map((a) => JSON.stringify(a)).join(' or ')})`);
    } else {
      unknown.push(k);
    }
  }
  if (unknown.length > 0) warn(`lorakit: ${source}: ignoring unknown adapter_config keys: ${unknown.join(', ')}`);
  if (typeof out.initLoraWeights === 'string' && out.initLoraWeights !== 'gaussian') out.initLoraWeights = true; // init does not matter for loaded weights
  return out as LoraConfig;
}
