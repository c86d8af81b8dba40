/**
 * peft LoRA factors ↔ llama.cpp's LoRA tensors for one base model.
 *
 * peft computes y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ with s = α/r (rsLoRA: α/√r), per module (alpha_pattern,
 * rank_pattern). llama.cpp computes the same with s = user_scale · alpha / r, r = lora_b's ne[0],
 * and ONE alpha per file (llama-adapter.cpp). So the file's alpha is chosen as s·r of the most common
 * module, and any module whose s·r differs gets the ratio folded into its B: B' = B · s·r / alpha.
 * (llama.cpp's own convert_lora_to_gguf.py copies lora_alpha, which is wrong by √r for rsLoRA.)
 * Names follow llama.cpp (`blk.N.attn_q.weight.lora_a`, numpy shapes A [r, in], B [out, r]); where
 * the base's Q/K rows are permuted (llama, mistral), B's rows are permuted the same way. An
 * embedding adapter becomes token_embd's pair with lora_a = Aᵀ ([n_vocab, r]) and lora_b = B, as
 * llama.cpp's llm_build_inp_embd reads it.
 */
import { AdapterError, ShapeError, shapeStr } from '../errors';
import { resolveConfig, ResolvedLoraConfig } from '../model/config';
import { AdapterOnDisk } from '../model/adapter_io';
import { loraScaling } from '../model/factors';
import { rankAndAlpha } from '../model/targeting';
import { ArchSpec, HParams, archOfGguf, ggufTensorName, hparamsOf, permuteHeads, permuteRows } from './arch';
import { GgufReader } from './reader';

/** What the mapping needs to know of the base model. */
export interface BaseInfo {
  spec: ArchSpec;
  hparams: HParams;
  /** numpy shapes of the base's tensors (null when only a config.json was given). */
  shapes: Map<string, readonly number[]> | null;
  /** The base has no output.weight: llama.cpp reuses token_embd for the output projection. */
  tiedOutput: boolean;
  source: string;
}

/** One module's factors in llama.cpp's layout. */
export interface LoraPair {
  /** The base tensor it changes (`blk.0.attn_q.weight`). */
  base: string;
  /** The peft module name (`model.layers.0.self_attn.q_proj`). */
  module: string;
  /** lora_a as llama.cpp stores it: [r, in], or for token_embd [n_vocab, r]. */
  a: Float32Array;
  aShape: [number, number];
  /** lora_b: [out, r], rows permuted like the base where it is. */
  b: Float32Array;
  bShape: [number, number];
  r: number;
  /** peft's scaling s of this module. */
  scaling: number;
  embedding: boolean;
}

export function baseInfoFromGguf(r: GgufReader): BaseInfo {
  const arch = r.getString('general.architecture');
  const spec = archOfGguf(arch, r.path);
  const nHead = r.getNumber(`${arch}.attention.head_count`);
  const embd = r.getNumber(`${arch}.embedding_length`);
  const hparams: HParams = {
    nHead,
    nHeadKv: r.getNumber(`${arch}.attention.head_count_kv`, nHead),
    headDim: r.getNumber(`${arch}.attention.key_length`, embd / nHead),
    nLayer: r.getNumber(`${arch}.block_count`),
    hidden: embd,
    vocab: r.has('token_embd.weight') ? r.tensor('token_embd.weight').shape[0] : 0,
  };
  const shapes = new Map(r.tensors.map((t) => [t.name, t.shape]));
  return { spec, hparams, shapes, tiedOutput: !r.has('output.weight'), source: r.path };
}

export function baseInfoFromConfig(spec: ArchSpec, config: Record<string, unknown>, source: string): BaseInfo {
  return { spec, hparams: hparamsOf(config, source), shapes: null, tiedOutput: spec.dropLmHead || config.tie_word_embeddings === true, source };
}

function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = x[i * cols + j];
  return out;
}

/** peft's scaling of one module (alpha_pattern, rsLoRA), r being the module's actual rank. */
export function moduleScaling(c: ResolvedLoraConfig, module: string, r: number): number {
  return loraScaling(rankAndAlpha(c, module).alpha, r, c.useRslora);
}

/** The adapter's modules as llama.cpp pairs; refuses what llama.cpp cannot express. */
export function peftToPairs(a: AdapterOnDisk, base: BaseInfo, adapterSource: string): LoraPair[] {
  const c = resolveConfig(a.config, 'adapter_config');
  if (c.useDora) throw new AdapterError(`${adapterSource}: DoRA (use_dora) cannot be expressed in a llama.cpp LoRA adapter (it has no magnitude vectors); merge it instead`);
  // llama.cpp's LoRA is x·Wᵀ + s·(x·Aᵀ)·Bᵀ and nothing else: no bias on B, no trained biases, no replaced modules
  const withBias = [...a.modules].filter(([, t]) => t.loraBBias).map(([m]) => m);
  if (withBias.length) throw new AdapterError(`${adapterSource}: lora_bias (a bias on lora_B, module '${withBias[0]}') cannot be expressed in a llama.cpp LoRA adapter`);
  if (a.biases.size) throw new AdapterError(`${adapterSource}: trained biases (bias='${String(a.config.bias)}', module '${[...a.biases.keys()][0]}') cannot be expressed in a llama.cpp LoRA adapter`);
  if (a.saved.size) throw new AdapterError(`${adapterSource}: modules_to_save ('${[...a.saved.keys()][0]}') replace whole weights, which a llama.cpp LoRA adapter cannot express`);
  const pairs: LoraPair[] = [];
  for (const [mod, t] of a.modules) {
    const g = ggufTensorName(base.spec, `${mod}.weight`);
    if (g === null) throw new AdapterError(`${adapterSource}: module '${mod}' has no llama.cpp tensor for ${base.spec.modelType} (lorakit maps ${Object.keys(base.spec.block).join(', ')}, embed_tokens, lm_head)`);
    const A = t.A!;
    const B = t.B!;
    if (A.shape.length !== 2 || B.shape.length !== 2) throw new AdapterError(`${adapterSource}: module '${mod}' has ${A.shape.length}-D factors; llama.cpp LoRA takes linear and embedding modules only`);
    const r = A.shape[0];
    if (B.shape[1] !== r) throw new ShapeError(`${adapterSource}: module '${mod}': lora_A ${shapeStr(A.shape)} and lora_B ${shapeStr(B.shape)} disagree on r`);
    const scaling = moduleScaling(c, mod, r);
    const Af = A.toFloat32Array();
    const Bf = B.toFloat32Array();
    if (t.embedding || g === 'token_embd.weight') {
      if (!t.embedding) throw new AdapterError(`${adapterSource}: module '${mod}' is the embedding but its factors are lora_A/lora_B, not lora_embedding_A/B`);
      if (base.tiedOutput)
        throw new AdapterError(`${adapterSource}: module '${mod}' (embedding LoRA): this base ties the output projection to token_embd, so llama.cpp would apply the adapter there too; it cannot be expressed`);
      const [nVocab, nEmbd] = [A.shape[1], B.shape[0]];
      checkShape(base, g, [nVocab, nEmbd], mod, adapterSource);
      pairs.push({ base: g, module: mod, a: transpose(Af, r, nVocab), aShape: [nVocab, r], b: Bf, bShape: [nEmbd, r], r, scaling, embedding: true });
      continue;
    }
    if (g === 'output.weight' && base.tiedOutput)
      throw new AdapterError(`${adapterSource}: module '${mod}': this base has no separate output weight (tied to token_embd), so a LoRA on it cannot be expressed for llama.cpp`);
    const [outF, inF] = [B.shape[0], A.shape[1]];
    checkShape(base, g, [outF, inF], mod, adapterSource);
    const heads = permuteHeads(base.spec, g, base.hparams);
    pairs.push({ base: g, module: mod, a: Af, aShape: [r, inF], b: heads === null ? Bf : permuteRows(Bf, heads, r), bShape: [outF, r], r, scaling, embedding: false });
  }
  return pairs.sort((x, y) => tensorOrder(x.base) - tensorOrder(y.base) || (x.base < y.base ? -1 : 1));
}

function tensorOrder(name: string): number {
  const m = /^blk\.(\d+)\./.exec(name);
  return m ? 1 + Number(m[1]) : name === 'token_embd.weight' ? 0 : 1e9;
}

function checkShape(base: BaseInfo, g: string, want: [number, number], mod: string, source: string): void {
  if (!base.shapes) return;
  const s = base.shapes.get(g);
  if (!s) throw new AdapterError(`${source}: module '${mod}' maps to '${g}', which the base ${base.source} does not have`);
  if (s.join() !== want.join()) throw new ShapeError(`${source}: module '${mod}' implies a weight of ${shapeStr(want)}, but '${g}' in ${base.source} is ${shapeStr(s)}`);
}

/** The single alpha for the file and the factor each pair's B is multiplied by (1 where none is needed). */
export function chooseAlpha(pairs: readonly LoraPair[]): { alpha: number; fold: number[] } {
  const counts = new Map<number, number>();
  for (const p of pairs) counts.set(p.scaling * p.r, (counts.get(p.scaling * p.r) ?? 0) + 1);
  let alpha = 0;
  let best = -1;
  for (const [v, n] of counts) if (n > best) [alpha, best] = [v, n];
  // llama.cpp treats alpha 0 as "no scaling" (scale 1), so a zero-scaling adapter is written with its B zeroed instead
  if (alpha === 0) alpha = pairs.length ? pairs[0].r : 1;
  // stored as f32: its rounding (≤ 6e-8 relative) is below the factors' own precision, so it is not folded
  return { alpha, fold: pairs.map((p) => (p.scaling * p.r === alpha ? 1 : (p.scaling * p.r) / alpha)) };
}
