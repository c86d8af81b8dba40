/**
 * The Hugging Face architectures lib/gguf converts, and how each maps onto llama.cpp's: tensor names
 * (llama.cpp's llama-arch.cpp / gguf-py's tensor_mapping.py), the Q/K row permutation llama.cpp's
 * converter applies where its rope pairs rotary dimensions differently (llama, mistral), the norm
 * offset Gemma's RMSNorm folds in (w + 1), and the hyperparameter keys llama.cpp reads.
 */
import { AdapterError, LoraTypeError } from '../errors';
import { GgufKV, kv } from './metadata';

export type GgufArch = 'llama' | 'qwen2' | 'qwen3' | 'gemma' | 'gemma2' | 'phi3';

export interface ArchSpec {
  /** general.architecture in the GGUF (mistral is written as llama, as llama.cpp's converter does). */
  arch: GgufArch;
  /** The HF model_type this came from. */
  modelType: string;
  /** Rows of q_proj / k_proj (weights and biases) are permuted for llama.cpp's rope. */
  permuteQK: boolean;
  /** RMSNorm weights are stored as w + 1 (Gemma's norm computes x·(1 + w)). */
  normPlusOne: boolean;
  /** lm_head is never written (Gemma ties it to the embedding). */
  dropLmHead: boolean;
  /** Per-block HF module suffix → llama.cpp tensor stem. */
  block: Record<string, string>;
}

const COMMON_BLOCK: Record<string, string> = {
  'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k', 'self_attn.v_proj': 'attn_v', 'self_attn.o_proj': 'attn_output',
  'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up', 'mlp.down_proj': 'ffn_down',
  input_layernorm: 'attn_norm', post_attention_layernorm: 'ffn_norm',
};

const SPECS: Record<string, ArchSpec> = {
  llama: { arch: 'llama', modelType: 'llama', permuteQK: true, normPlusOne: false, dropLmHead: false, block: COMMON_BLOCK },
  mistral: { arch: 'llama', modelType: 'mistral', permuteQK: true, normPlusOne: false, dropLmHead: false, block: COMMON_BLOCK },
  qwen2: { arch: 'qwen2', modelType: 'qwen2', permuteQK: false, normPlusOne: false, dropLmHead: false, block: COMMON_BLOCK },
  qwen3: { arch: 'qwen3', modelType: 'qwen3', permuteQK: false, normPlusOne: false, dropLmHead: false, block: { ...COMMON_BLOCK, 'self_attn.q_norm': 'attn_q_norm', 'self_attn.k_norm': 'attn_k_norm' } },
  gemma: { arch: 'gemma', modelType: 'gemma', permuteQK: false, normPlusOne: true, dropLmHead: true, block: COMMON_BLOCK },
  gemma2: {
    arch: 'gemma2', modelType: 'gemma2', permuteQK: false, normPlusOne: true, dropLmHead: true,
    block: { ...COMMON_BLOCK, post_attention_layernorm: 'post_attention_norm', pre_feedforward_layernorm: 'ffn_norm', post_feedforward_layernorm: 'post_ffw_norm' },
  },
  phi3: {
    arch: 'phi3', modelType: 'phi3', permuteQK: false, normPlusOne: false, dropLmHead: false,
    block: { 'self_attn.qkv_proj': 'attn_qkv', 'self_attn.o_proj': 'attn_output', 'mlp.gate_up_proj': 'ffn_up', 'mlp.down_proj': 'ffn_down', input_layernorm: 'attn_norm', post_attention_layernorm: 'ffn_norm' },
  },
};

const BY_HF_CLASS: Record<string, string> = {
  LlamaForCausalLM: 'llama', MistralForCausalLM: 'mistral', Qwen2ForCausalLM: 'qwen2', Qwen3ForCausalLM: 'qwen3',
  GemmaForCausalLM: 'gemma', Gemma2ForCausalLM: 'gemma2', Phi3ForCausalLM: 'phi3',
};

export const SUPPORTED_MODEL_TYPES = Object.keys(SPECS);

/** The spec for a config.json (by model_type, else by architectures[0]). */
export function archOf(config: Record<string, unknown>, source = 'config.json'): ArchSpec {
  const mt = typeof config.model_type === 'string' ? config.model_type : undefined;
  const cls = Array.isArray(config.architectures) && typeof config.architectures[0] === 'string' ? config.architectures[0] : undefined;
  const key = mt && SPECS[mt] ? mt : cls ? BY_HF_CLASS[cls] : undefined;
  if (!key) throw new AdapterError(`${source}: model_type '${mt ?? '?'}' (${cls ?? 'no architectures'}) is not one lorakit converts to GGUF (${SUPPORTED_MODEL_TYPES.join(', ')})`);
  return SPECS[key];
}

/** The spec for a GGUF general.architecture. */
export function archOfGguf(arch: string, source: string): ArchSpec {
  const spec = Object.values(SPECS).find((s) => s.arch === arch);
  if (!spec) throw new AdapterError(`${source}: general.architecture '${arch}' is not one lorakit maps adapters for (${[...new Set(Object.values(SPECS).map((s) => s.arch))].join(', ')})`);
  return spec;
}

/** The llama.cpp tensor name of an HF parameter name (`model.layers.3.mlp.up_proj.weight`), or null if unknown. */
export function ggufTensorName(spec: ArchSpec, hfName: string): string | null {
  const name = hfName.replace(/^model\.model\./, 'model.');
  const m = /^(?:model\.)?layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(name);
  if (m) {
    const stem = spec.block[m[2]];
    return stem ? `blk.${m[1]}.${stem}.${m[3]}` : null;
  }
  if (/^(?:model\.)?embed_tokens\.weight$/.test(name)) return 'token_embd.weight';
  if (/^(?:model\.)?norm\.weight$/.test(name)) return 'output_norm.weight';
  if (name === 'lm_head.weight') return 'output.weight';
  return null;
}

/** The HF parameter name of a llama.cpp tensor name (the inverse of ggufTensorName, with the `model.` prefix). */
export function hfTensorName(spec: ArchSpec, ggufName: string): string | null {
  const m = /^blk\.(\d+)\.(.+)\.(weight|bias)$/.exec(ggufName);
  if (m) {
    const suffix = Object.entries(spec.block).find(([, stem]) => stem === m[2])?.[0];
    return suffix ? `model.layers.${m[1]}.${suffix}.${m[3]}` : null;
  }
  return { 'token_embd.weight': 'model.embed_tokens.weight', 'output_norm.weight': 'model.norm.weight', 'output.weight': 'lm_head.weight' }[ggufName] ?? null;
}

/** Buffers transformers may save that are not weights (rotary inverse frequencies). */
export function isIgnoredHfTensor(name: string): boolean {
  return /rotary_emb\.inv_freq$/.test(name);
}

export interface HParams {
  nHead: number;
  nHeadKv: number;
  headDim: number;
  nLayer: number;
  hidden: number;
  vocab: number;
}

function num(config: Record<string, unknown>, key: string, source: string, fallback?: number): number {
  const v = config[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new LoraTypeError(`${source}: '${key}' is missing`);
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new LoraTypeError(`${source}: '${key}' must be a number, got ${JSON.stringify(v)}`);
  return v;
}

export function hparamsOf(config: Record<string, unknown>, source: string): HParams {
  const hidden = num(config, 'hidden_size', source);
  const nHead = num(config, 'num_attention_heads', source);
  return {
    nHead,
    nHeadKv: num(config, 'num_key_value_heads', source, nHead),
    headDim: num(config, 'head_dim', source, hidden / nHead),
    nLayer: num(config, 'num_hidden_layers', source),
    hidden,
    vocab: num(config, 'vocab_size', source),
  };
}

/** rope settings of transformers ≥ 5 (rope_parameters) or older configs (rope_theta + rope_scaling). */
export function ropeOf(config: Record<string, unknown>): Record<string, unknown> {
  const p = (config.rope_parameters ?? config.rope_scaling ?? {}) as Record<string, unknown>;
  const full = (p.full_attention as Record<string, unknown> | undefined) ?? p;
  return { rope_theta: config.rope_theta, ...full, rope_type: full.rope_type ?? full.type };
}

/**
 * The `{arch}.*` hyperparameter keys llama.cpp reads (convert_hf_to_gguf's set_gguf_parameters).
 * Returns the keys and, for Llama 3 rope scaling, the rope_freqs factors llama.cpp expects as a tensor.
 */
export function hparamKeys(spec: ArchSpec, config: Record<string, unknown>, source: string): { keys: Array<[string, GgufKV]>; ropeFreqs: Float32Array | null } {
  const a = spec.arch;
  const h = hparamsOf(config, source);
  const keys: Array<[string, GgufKV]> = [];
  const put = (k: string, v: GgufKV) => keys.push([`${a}.${k}`, v]);
  put('vocab_size', kv.u32(h.vocab));
  put('context_length', kv.u32(num(config, 'max_position_embeddings', source, 4096)));
  put('embedding_length', kv.u32(h.hidden));
  put('block_count', kv.u32(h.nLayer));
  put('feed_forward_length', kv.u32(num(config, 'intermediate_size', source)));
  put('attention.head_count', kv.u32(h.nHead));
  put('attention.head_count_kv', kv.u32(h.nHeadKv));
  put('attention.layer_norm_rms_epsilon', kv.f32(num(config, 'rms_norm_eps', source, 1e-6)));
  const rope = ropeOf(config);
  put('rope.freq_base', kv.f32(typeof rope.rope_theta === 'number' ? rope.rope_theta : 10000));
  if (config.head_dim !== undefined || spec.arch === 'gemma' || spec.arch === 'gemma2') {
    put('attention.key_length', kv.u32(h.headDim));
    put('attention.value_length', kv.u32(h.headDim));
  }
  if (a === 'llama') put('rope.dimension_count', kv.u32(h.headDim));
  if (a === 'phi3') {
    const partial = typeof rope.partial_rotary_factor === 'number' ? rope.partial_rotary_factor : 1;
    put('rope.dimension_count', kv.u32(Math.floor(partial * h.hidden) / h.nHead | 0));
    const orig = config.original_max_position_embeddings ?? rope.original_max_position_embeddings;
    if (typeof orig === 'number') put('rope.scaling.original_context_length', kv.u32(orig));
    put('attention.sliding_window', kv.u32(typeof config.sliding_window === 'number' ? config.sliding_window : 0));
  }
  if (a === 'gemma2') {
    const qpa = config.query_pre_attn_scalar;
    if (typeof qpa === 'number' && qpa !== h.headDim && h.nLayer !== 46)
      throw new AdapterError(`${source}: query_pre_attn_scalar ${qpa} differs from head_dim ${h.headDim}; llama.cpp's gemma2 scales queries by 1/√head_dim (except its 27B), so the converted model would differ`);
    put('attn_logit_softcapping', kv.f32(num(config, 'attn_logit_softcapping', source, 50)));
    put('final_logit_softcapping', kv.f32(num(config, 'final_logit_softcapping', source, 30)));
    put('attention.sliding_window', kv.u32(num(config, 'sliding_window', source, 4096)));
  }
  let ropeFreqs: Float32Array | null = null;
  const type = rope.rope_type;
  if (type === 'linear' && typeof rope.factor === 'number') {
    put('rope.scaling.type', kv.str('linear'));
    put('rope.scaling.factor', kv.f32(rope.factor));
  } else if (type === 'yarn' && typeof rope.factor === 'number') {
    put('rope.scaling.type', kv.str('yarn'));
    put('rope.scaling.factor', kv.f32(rope.factor));
    put('rope.scaling.original_context_length', kv.u32(num(rope, 'original_max_position_embeddings', `${source} rope_parameters`)));
  } else if (type === 'llama3') {
    ropeFreqs = llama3RopeFactors(rope, h.headDim);
  } else if (type !== undefined && type !== 'default' && !(a === 'phi3' && (type === 'longrope' || type === 'su'))) {
    throw new AdapterError(`${source}: rope_type '${String(type)}' is not one lorakit converts (default, linear, yarn, llama3)`);
  }
  if (a === 'phi3' && (type === 'longrope' || type === 'su')) throw new AdapterError(`${source}: phi3 with longrope scaling (rope_factors tensors) is not converted by lorakit`);
  return { keys, ropeFreqs };
}

/** Llama 3's per-frequency rope factors (convert_hf_to_gguf's LlamaModel.generate_extra_tensors). */
function llama3RopeFactors(rope: Record<string, unknown>, dim: number): Float32Array {
  const n = (k: string, d: number) => (typeof rope[k] === 'number' ? (rope[k] as number) : d);
  const base = n('rope_theta', 10000);
  const factor = n('factor', 8);
  const low = n('low_freq_factor', 1);
  const high = n('high_freq_factor', 4);
  const old = n('original_max_position_embeddings', 8192);
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    const freq = 1 / Math.fround(Math.pow(base, Math.fround((2 * i) / dim)));
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < old / high) out[i] = 1;
    else if (wavelen > old / low) out[i] = factor;
    else {
      const smooth = (old / wavelen - low) / (high - low);
      out[i] = 1 / ((1 - smooth) / factor + smooth);
    }
  }
  return out;
}

/** Q/K row permutation: new row h·hd + 2i + j = old row h·hd + j·hd/2 + i (rows of `cols` values). */
export function permuteRows(src: Float32Array, nHead: number, cols: number): Float32Array {
  const rows = src.length / cols;
  const hd = rows / nHead;
  if (!Number.isInteger(hd) || hd % 2 !== 0) throw new LoraTypeError(`permute: ${rows} rows do not split into ${nHead} heads of an even size`);
  const out = new Float32Array(src.length);
  for (let h = 0; h < nHead; h++)
    for (let i = 0; i < hd / 2; i++)
      for (let j = 0; j < 2; j++) out.set(src.subarray((h * hd + j * (hd / 2) + i) * cols, (h * hd + j * (hd / 2) + i + 1) * cols), (h * hd + 2 * i + j) * cols);
  return out;
}

/** The inverse of permuteRows. */
export function unpermuteRows(src: Float32Array, nHead: number, cols: number): Float32Array {
  const rows = src.length / cols;
  const hd = rows / nHead;
  const out = new Float32Array(src.length);
  for (let h = 0; h < nHead; h++)
    for (let i = 0; i < hd / 2; i++)
      for (let j = 0; j < 2; j++) out.set(src.subarray((h * hd + 2 * i + j) * cols, (h * hd + 2 * i + j + 1) * cols), (h * hd + j * (hd / 2) + i) * cols);
  return out;
}

/** Which permutation (if any) a tensor needs: the head count for Q (n_head) or K (n_head_kv). */
export function permuteHeads(spec: ArchSpec, ggufName: string, h: HParams): number | null {
  if (!spec.permuteQK) return null;
  if (/^blk\.\d+\.attn_q\.(weight|bias)$/.test(ggufName)) return h.nHead;
  if (/^blk\.\d+\.attn_k\.(weight|bias)$/.test(ggufName)) return h.nHeadKv;
  return null;
}
