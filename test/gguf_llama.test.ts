/**
 * The golden llama_tiny case through node-llama-cpp 3.21.1: the Hugging Face base converted to GGUF
 * against transformers' logits_base, and peft's adapter converted to a llama.cpp LoRA and applied at
 * runtime against logits_lora (relative error of the centered logits ≤ 1e-4; a correct conversion
 * lands near 5e-7). Files built wrong on purpose (Q/K rows of lora_b not permuted, α off by 1%,
 * rsLoRA's α copied as llama.cpp's own converter does) must miss by far more. One model load.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adapterToGguf } from '../lib/gguf/adapter_to_gguf';
import { unpermuteRows } from '../lib/gguf/arch';
import { convertModelToGguf } from '../lib/gguf/convert_model';
import { GgufReader } from '../lib/gguf/reader';
import { adapterVariant, ggufVariant } from './helpers/gguf_cases';
import { LLAMA_TINY, LlamaRuntime, centeredRelErr, llamaTinyExpected } from './helpers/llama_runtime';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-gguf-llama-'));
const base = path.join(dir, 'base.gguf');
const adapterDir = path.join(LLAMA_TINY, 'adapter');
const exp = llamaTinyExpected();
const llama = new LlamaRuntime();
const errs: Record<string, number> = {};

beforeAll(async () => {
  const warnings: string[] = [];
  await convertModelToGguf({ model: LLAMA_TINY, out: base, outtype: 'f32', warn: (m) => warnings.push(m) });
  expect(warnings.join()).toMatch(/no tokenizer.json; writing a placeholder vocabulary of 256 tokens/);
});
afterAll(async () => {
  await llama.close();
  fs.rmSync(dir, { recursive: true, force: true });
  console.log(`node-llama-cpp vs transformers (centered logits, relative): ${Object.entries(errs).map(([k, v]) => `${k} ${v.toExponential(2)}`).join(', ')}`);
});

async function errWith(lora: string | null, want: Float32Array, scale = 1): Promise<number> {
  return centeredRelErr(await llama.logProbs(base, exp.ids, lora ? { filePath: lora, scale } : undefined), want, exp.vocab);
}

test('the converted base: llama.cpp names, hyperparameters and placeholder vocabulary; logits match transformers', async () => {
  const r = new GgufReader(base);
  try {
    expect(r.getString('general.architecture')).toBe('llama');
    expect(r.getNumber('llama.block_count')).toBe(2);
    expect(r.getNumber('llama.attention.head_count_kv')).toBe(2);
    expect(r.getNumber('llama.rope.dimension_count')).toBe(16);
    expect(r.tensor('blk.1.attn_k.weight').shape).toEqual([32, 64]);
    expect(r.tensor('output.weight').shape).toEqual([256, 64]);
    const tokens = r.get('tokenizer.ggml.tokens') as { items: string[] };
    expect(tokens.items.length).toBe(256);
    expect(tokens.items[3 + 10]).toBe('<0x0A>');
  } finally {
    r.close();
  }
  errs.base = await errWith(null, exp.base);
  expect(errs.base).toBeLessThan(1e-4);
  expect(errs.base).toBeLessThan(5e-6); // measured 3.7e-7
});

test('peft adapter → GGUF LoRA, applied at runtime: matches logits_lora, and at scale 0 the base', async () => {
  const lora = path.join(dir, 'lora.gguf');
  const res = await adapterToGguf({ adapter: adapterDir, base, out: lora });
  expect(res).toMatchObject({ architecture: 'llama', alpha: 8, pairs: 14, folded: [] });
  const r = new GgufReader(lora);
  expect(r.getString('general.type')).toBe('adapter');
  expect(r.getString('adapter.type')).toBe('lora');
  expect(r.tensor('blk.0.attn_q.weight.lora_a').shape).toEqual([4, 64]);
  expect(r.tensor('blk.0.attn_k.weight.lora_b').shape).toEqual([32, 4]);
  r.close();
  errs.lora = await errWith(lora, exp.lora);
  expect(errs.lora).toBeLessThan(1e-4);
  expect(errs.lora).toBeLessThan(5e-6);
  expect(await errWith(lora, exp.base, 0)).toBeLessThan(1e-4);
});

test('the same from --base-config (config.json instead of the GGUF base) gives the same file', async () => {
  const a = path.join(dir, 'lora_cfg.gguf');
  await adapterToGguf({ adapter: adapterDir, baseConfig: path.join(LLAMA_TINY, 'config.json'), out: a });
  const b = path.join(dir, 'lora_ref.gguf');
  await adapterToGguf({ adapter: adapterDir, base, out: b });
  expect(fs.readFileSync(a).equals(fs.readFileSync(b))).toBe(true);
});

test('lora_b of Q and K left in peft\'s row order (no permutation) misses by far', async () => {
  const good = path.join(dir, 'lora.gguf');
  const bad = ggufVariant(good, path.join(dir, 'lora_noperm.gguf'), {
    transform: (name, v) => (/attn_q\.weight\.lora_b$/.test(name) ? unpermuteRows(v, 4, 4) : /attn_k\.weight\.lora_b$/.test(name) ? unpermuteRows(v, 2, 4) : v),
  });
  errs.noPermutation = await errWith(bad, exp.lora);
  expect(errs.noPermutation).toBeGreaterThan(1e-2);
});

test('α off by 1% misses by about 6e-3', async () => {
  const bad = ggufVariant(path.join(dir, 'lora.gguf'), path.join(dir, 'lora_alpha.gguf'), { alpha: 8 * 1.01 });
  errs.alphaOff1pct = await errWith(bad, exp.lora);
  expect(errs.alphaOff1pct).toBeGreaterThan(1e-3);
});

test('rsLoRA: α = s·r (here 8 for lora_alpha 4, r 4); copying lora_alpha as llama.cpp\'s converter does misses', async () => {
  // use_rslora with lora_alpha 4 and r 4 has s = 4/√4 = 2, the golden adapter's scaling
  const rs = adapterVariant(adapterDir, path.join(dir, 'rslora'), { use_rslora: true, lora_alpha: 4 });
  const lora = path.join(dir, 'lora_rs.gguf');
  const res = await adapterToGguf({ adapter: rs, base, out: lora });
  expect(res.alpha).toBe(8);
  errs.rslora = await errWith(lora, exp.lora);
  expect(errs.rslora).toBeLessThan(1e-4);
  const copied = ggufVariant(lora, path.join(dir, 'lora_rs_copied.gguf'), { alpha: 4 });
  errs.rsloraAlphaCopied = await errWith(copied, exp.lora);
  expect(errs.rsloraAlphaCopied).toBeGreaterThan(1e-2);
});

test('per-module scalings (alpha_pattern) fold into lora_b under one file alpha', async () => {
  // q_proj gets α 16 (s = 4) with its B halved: the same ΔW as the golden adapter
  const v = adapterVariant(adapterDir, path.join(dir, 'pattern'), { alpha_pattern: { q_proj: 16 } }, [[/q_proj/, 0.5]]);
  const lora = path.join(dir, 'lora_pattern.gguf');
  const res = await adapterToGguf({ adapter: v, base, out: lora });
  expect(res.alpha).toBe(8);
  expect(res.folded.sort()).toEqual(['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj']);
  errs.alphaPattern = await errWith(lora, exp.lora);
  expect(errs.alphaPattern).toBeLessThan(1e-4);
});
