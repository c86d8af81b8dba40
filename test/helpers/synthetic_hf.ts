/**
 * Tiny Hugging Face checkpoints with random weights for each architecture lib/gguf converts
 * (config.json + model.safetensors laid out as transformers saves them), and a peft adapter on
 * every linear layer: for tests that need an architecture's layout but no reference logits.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RawTensor, writeSafetensors } from '../../lib/io/safetensors_writer';
import { rawF32 } from './gguf_cases';

const H = 64, HD = 16, NH = 4, NKV = 2, F = 96, L = 2;
const V_DEFAULT = 272; // ≥ 259: every byte has a placeholder token

export const SYNTHETIC_ARCHS = ['llama', 'mistral', 'qwen2', 'qwen3', 'gemma', 'gemma2', 'phi3'] as const;
export type SyntheticArch = (typeof SYNTHETIC_ARCHS)[number];

const CLASS: Record<SyntheticArch, string> = {
  llama: 'LlamaForCausalLM', mistral: 'MistralForCausalLM', qwen2: 'Qwen2ForCausalLM', qwen3: 'Qwen3ForCausalLM',
  gemma: 'GemmaForCausalLM', gemma2: 'Gemma2ForCausalLM', phi3: 'Phi3ForCausalLM',
};

/** HF parameter names and shapes of the model, and its linear modules. */
function layout(arch: SyntheticArch, V: number): { params: Array<[string, number[]]>; linear: Array<[string, number, number]>; tied: boolean } {
  const tied = arch === 'qwen2' || arch === 'gemma' || arch === 'gemma2';
  const params: Array<[string, number[]]> = [['model.embed_tokens.weight', [V, H]]];
  const linear: Array<[string, number, number]> = [];
  const lin = (name: string, out: number, inF: number, bias = false) => {
    params.push([`${name}.weight`, [out, inF]]);
    if (bias) params.push([`${name}.bias`, [out]]);
    linear.push([name, out, inF]);
  };
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}`;
    params.push([`${p}.input_layernorm.weight`, [H]], [`${p}.post_attention_layernorm.weight`, [H]]);
    if (arch === 'gemma2') params.push([`${p}.pre_feedforward_layernorm.weight`, [H]], [`${p}.post_feedforward_layernorm.weight`, [H]]);
    if (arch === 'phi3') {
      lin(`${p}.self_attn.qkv_proj`, (NH + 2 * NKV) * HD, H);
      lin(`${p}.self_attn.o_proj`, H, NH * HD);
      lin(`${p}.mlp.gate_up_proj`, 2 * F, H);
      lin(`${p}.mlp.down_proj`, H, F);
      continue;
    }
    lin(`${p}.self_attn.q_proj`, NH * HD, H, arch === 'qwen2');
    lin(`${p}.self_attn.k_proj`, NKV * HD, H, arch === 'qwen2');
    lin(`${p}.self_attn.v_proj`, NKV * HD, H, arch === 'qwen2');
    lin(`${p}.self_attn.o_proj`, H, NH * HD);
    if (arch === 'qwen3') params.push([`${p}.self_attn.q_norm.weight`, [HD]], [`${p}.self_attn.k_norm.weight`, [HD]]);
    lin(`${p}.mlp.gate_proj`, F, H);
    lin(`${p}.mlp.up_proj`, F, H);
    lin(`${p}.mlp.down_proj`, H, F);
  }
  params.push(['model.norm.weight', [H]]);
  if (!tied) lin('lm_head', V, H);
  return { params, linear, tied };
}

/** Writes <dir>/config.json + model.safetensors and <dir>/adapter (r 4, α 8, every linear layer). */
export function writeSyntheticModel(arch: SyntheticArch, dir: string, V = V_DEFAULT): { vocab: number } {
  fs.mkdirSync(path.join(dir, 'adapter'), { recursive: true });
  const { params, linear, tied } = layout(arch, V);
  const config: Record<string, unknown> = {
    architectures: [CLASS[arch]], model_type: arch, hidden_size: H, intermediate_size: F, num_hidden_layers: L,
    num_attention_heads: NH, num_key_value_heads: NKV, head_dim: HD, vocab_size: V, max_position_embeddings: 128,
    rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: tied, bos_token_id: 1, eos_token_id: 2,
  };
  if (arch === 'gemma2') Object.assign(config, { query_pre_attn_scalar: HD, sliding_window: 4096, attn_logit_softcapping: 50, final_logit_softcapping: 30 });
  if (arch === 'phi3') Object.assign(config, { sliding_window: null, original_max_position_embeddings: 128 });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  const tensors = new Map<string, RawTensor>();
  params.forEach(([n, s], i) => {
    const norm = /norm\.weight$/.test(n);
    const t = rawF32(s, 1000 + i, norm ? 0.2 : 0.15);
    if (norm && !arch.startsWith('gemma')) {
      const v = new Float32Array(t.bytes.buffer);
      for (let k = 0; k < v.length; k++) v[k] += 1;
    }
    tensors.set(n, t);
  });
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  const ad = new Map<string, RawTensor>();
  linear.forEach(([name, out, inF], i) => {
    ad.set(`base_model.model.${name}.lora_A.weight`, rawF32([4, inF], 5000 + i, 0.3));
    ad.set(`base_model.model.${name}.lora_B.weight`, rawF32([out, 4], 7000 + i, 0.3));
  });
  writeSafetensors(path.join(dir, 'adapter', 'adapter_model.safetensors'), ad, { format: 'pt' });
  fs.writeFileSync(path.join(dir, 'adapter', 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: linear.map(([n]) => n) }));
  return { vocab: V };
}
