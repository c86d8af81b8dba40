/**
 * The CLI forms of the GGUF work (`lorakit convert`, `lorakit merge` with a .gguf base, `lorakit
 * inspect` on a .gguf) on the golden llama_tiny case, their usage errors, and the adapters lorakit
 * refuses to convert (DoRA, unknown modules, embedding LoRA on a tied base) with messages naming why.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { run as convert } from '../lib/cli/convert';
import { run as inspect } from '../lib/cli/inspect';
import { run as merge } from '../lib/cli/merge';
import { GgufReader } from '../lib/gguf/reader';
import { adapterVariant, rawF32 } from './helpers/gguf_cases';
import { LLAMA_TINY } from './helpers/llama_runtime';

const ADAPTER = path.join(LLAMA_TINY, 'adapter');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-gguf-cli-'));
const base = path.join(dir, 'base.gguf');
let out: string[];
let err: string[];
beforeEach(() => {
  out = [];
  err = [];
  jest.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void out.push(a.join(' ')));
  jest.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void err.push(a.join(' ')));
  jest.spyOn(console, 'warn').mockImplementation((...a: unknown[]) => void err.push(a.join(' ')));
});
afterEach(() => jest.restoreAllMocks());
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

test('convert --model, convert --to gguf / --to peft, merge --base x.gguf, inspect x.gguf', async () => {
  expect(await convert(['--to', 'gguf', '--model', LLAMA_TINY, '--out', base, '--outtype', 'f32'])).toBe(0);
  expect(out.join('\n')).toMatch(/wrote .*base.gguf: llama, 21 tensors/);
  expect(err.join('\n')).toMatch(/placeholder vocabulary/);
  const lora = path.join(dir, 'lora.gguf');
  expect(await convert(['--to', 'gguf', '--adapter', ADAPTER, '--base', base, '--out', lora])).toBe(0);
  expect(out.join('\n')).toMatch(/LoRA for llama, 14 modules, adapter.lora.alpha = 8/);
  const lora2 = path.join(dir, 'lora2.gguf');
  expect(await convert(['--to', 'gguf', '--adapter', ADAPTER, '--base-config', path.join(LLAMA_TINY, 'config.json'), '--out', lora2, '--quiet'])).toBe(0);
  expect(fs.readFileSync(lora2).equals(fs.readFileSync(lora))).toBe(true);
  const back = path.join(dir, 'back');
  expect(await convert(['--to', 'peft', '--adapter', lora, '--base', base, '--out', back])).toBe(0);
  expect(fs.existsSync(path.join(back, 'adapter_model.safetensors'))).toBe(true);
  const merged = path.join(dir, 'merged.gguf');
  expect(await merge(['--base', base, '--adapter', back, '--out', merged, '--outtype', 'q8_0'])).toBe(0);
  expect(out.join('\n')).toMatch(/merged 14 weights/);
  const r = new GgufReader(merged);
  expect(r.tensor('blk.1.ffn_up.weight').typeName).toBe('Q8_0');
  r.close();
  out.length = 0;
  expect(await inspect([merged])).toBe(0);
  const text = out.join('\n');
  expect(text).toMatch(/general.architecture\s+string "llama"/);
  expect(text).toMatch(/tokenizer.ggml.tokens\s+array\s+string\[256\]/);
  expect(text).toMatch(/blk.0.attn_q.weight\s+Q8_0\s+\[64, 64\]/);
  out.length = 0;
  expect(await inspect([lora, '--json'])).toBe(0);
  const json = JSON.parse(out.join('')) as { kind: string; tensors: Array<{ name: string; shape: number[] }> };
  expect(json.kind).toBe('gguf');
  expect(json.tensors.find((t) => t.name === 'blk.0.attn_k.weight.lora_b')!.shape).toEqual([32, 4]);
});

test('--help and usage errors', async () => {
  expect(await convert(['--help'])).toBe(0);
  expect(out.join('\n')).toMatch(/--to peft --adapter <adapter.gguf> --base <base.gguf> --out <peft dir>/);
  expect(await merge(['--help'])).toBe(0);
  expect(out.join('\n')).toMatch(/--outtype same\|f32\|f16\|bf16\|q8_0\|q4_0/);
  expect(await convert(['--adapter', ADAPTER, '--out', 'x.gguf'])).toBe(2);
  expect(err.pop()).toMatch(/--to must be gguf or peft/);
  expect(await convert(['--to', 'gguf', '--adapter', ADAPTER, '--base', base, '--base-config', 'c.json', '--out', 'x.gguf'])).toBe(2);
  expect(err.pop()).toMatch(/give one of --base/);
  expect(await convert(['--to', 'gguf', '--model', LLAMA_TINY, '--adapter', ADAPTER, '--out', 'x.gguf'])).toBe(2);
  expect(await convert(['--to', 'gguf', '--model', LLAMA_TINY, '--out', path.join(dir, 'q.gguf'), '--outtype', 'q5_k'])).toBe(1);
  expect(err.pop()).toMatch(/outtype: expected one of f32, f16, bf16, q8_0, q4_0/);
  expect(await merge(['--base', base, '--adapter', ADAPTER])).toBe(2);
  expect(err.pop()).toMatch(/missing --out/);
});

test('refused: DoRA, lora_bias, modules_to_save, modules llama.cpp has no tensor for, embedding LoRA on a tied base, a wrong base', async () => {
  const cfg = path.join(LLAMA_TINY, 'config.json');
  const mods = ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.0.self_attn.o_proj',
    'model.layers.0.mlp.gate_proj', 'model.layers.0.mlp.up_proj', 'model.layers.0.mlp.down_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.k_proj',
    'model.layers.1.self_attn.v_proj', 'model.layers.1.self_attn.o_proj', 'model.layers.1.mlp.gate_proj', 'model.layers.1.mlp.up_proj', 'model.layers.1.mlp.down_proj'];
  const outF = (m: string) => (/k_proj|v_proj/.test(m) ? 32 : /gate|up/.test(m) ? 160 : 64);
  const dora = adapterVariant(ADAPTER, path.join(dir, 'dora'), { use_dora: true }, [], new Map(mods.map((m, i) => [`base_model.model.${m}.lora_magnitude_vector`, rawF32([outF(m)], i + 1)])));
  const o = path.join(dir, 'refused.gguf');
  expect(await convert(['--to', 'gguf', '--adapter', dora, '--base-config', cfg, '--out', o])).toBe(1);
  expect(err.pop()).toMatch(/DoRA \(use_dora\) cannot be expressed in a llama.cpp LoRA adapter/);

  const lb = adapterVariant(ADAPTER, path.join(dir, 'lora_bias'), { lora_bias: true }, [], new Map(mods.map((m, i) => [`base_model.model.${m}.lora_B.bias`, rawF32([outF(m)], 50 + i)])));
  expect(await convert(['--to', 'gguf', '--adapter', lb, '--base-config', cfg, '--out', o])).toBe(1);
  expect(err.pop()).toMatch(/lora_bias \(a bias on lora_B, module 'model\.layers\.\d\.[a-z_.]+'\) cannot be expressed/);
  const mts = adapterVariant(ADAPTER, path.join(dir, 'mts'), { modules_to_save: ['lm_head'] }, [], new Map([['base_model.model.lm_head.weight', rawF32([256, 64], 9)]]));
  expect(await convert(['--to', 'gguf', '--adapter', mts, '--base-config', cfg, '--out', o])).toBe(1);
  expect(err.pop()).toMatch(/modules_to_save \('lm_head'\) replace whole weights/);
  expect(await merge(['--base', base, '--adapter', mts, '--out', o])).toBe(1);
  expect(err.pop()).toMatch(/modules_to_save/);

  const odd = adapterVariant(ADAPTER, path.join(dir, 'odd'), { target_modules: [...mods, 'model.layers.0.mlp.extra_proj'] }, [], new Map([
    ['base_model.model.model.layers.0.mlp.extra_proj.lora_A.weight', rawF32([4, 64], 1)],
    ['base_model.model.model.layers.0.mlp.extra_proj.lora_B.weight', rawF32([64, 4], 2)],
  ]));
  expect(await convert(['--to', 'gguf', '--adapter', odd, '--base-config', cfg, '--out', o])).toBe(1);
  expect(err.pop()).toMatch(/module 'model.layers.0.mlp.extra_proj' has no llama.cpp tensor for llama/);

  const tiedCfg = path.join(dir, 'tied_config.json');
  fs.writeFileSync(tiedCfg, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfg, 'utf8')), tie_word_embeddings: true }));
  const emb = adapterVariant(ADAPTER, path.join(dir, 'emb'), { target_modules: [...mods, 'model.embed_tokens'] }, [], new Map([
    ['base_model.model.model.embed_tokens.lora_embedding_A', rawF32([4, 256], 3)],
    ['base_model.model.model.embed_tokens.lora_embedding_B', rawF32([64, 4], 4)],
  ]));
  expect(await convert(['--to', 'gguf', '--adapter', emb, '--base-config', tiedCfg, '--out', o])).toBe(1);
  expect(err.pop()).toMatch(/embedding LoRA.*ties the output projection to token_embd/);

  const other = path.join(dir, 'other_config.json');
  fs.writeFileSync(other, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfg, 'utf8')), model_type: 'qwen2', architectures: ['Qwen2ForCausalLM'] }));
  expect(await convert(['--to', 'gguf', '--adapter', ADAPTER, '--base-config', other, '--out', o])).toBe(0);
  expect(await convert(['--to', 'peft', '--adapter', o, '--base', base, '--out', path.join(dir, 'nope')])).toBe(1);
  expect(err.pop()).toMatch(/is for architecture 'qwen2', the base .* is 'llama'/);
  fs.rmSync(o);
  expect(await convert(['--to', 'gguf', '--adapter', ADAPTER, '--base', path.join(dir, 'missing.gguf'), '--out', o])).toBe(1);
  expect(err.pop()).toMatch(/no such file/);
  expect(fs.existsSync(o)).toBe(false);
});
