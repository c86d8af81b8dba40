/**
 * Merging into a GGUF base and the way back to peft, on the golden llama_tiny case: the merged
 * GGUF read by node-llama-cpp against transformers' logits_merged (f32: ≤ 1e-4; q8_0: within a few
 * percent), the same merge from the peft directory and from the converted LoRA GGUF, untouched
 * tensors copied byte for byte, --scale, and peft → GGUF → peft giving peft's tensors back exactly.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ggufToPeft } from '../lib/gguf/adapter_from_gguf';
import { adapterToGguf } from '../lib/gguf/adapter_to_gguf';
import { convertModelToGguf } from '../lib/gguf/convert_model';
import { GGML } from '../lib/gguf/ggml_types';
import { mergeGguf } from '../lib/gguf/merge';
import { GgufReader } from '../lib/gguf/reader';
import { GgufStreamWriter } from '../lib/gguf/writer';
import { SafetensorsFile } from '../lib/io/safetensors';
import { ggufVariant, rawF32 } from './helpers/gguf_cases';
import { writeSafetensors } from '../lib/io/safetensors_writer';
import { LLAMA_TINY, LlamaRuntime, centeredRelErr, llamaTinyExpected } from './helpers/llama_runtime';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-gguf-merge-'));
const base = path.join(dir, 'base.gguf');
const loraGguf = path.join(dir, 'lora.gguf');
const adapterDir = path.join(LLAMA_TINY, 'adapter');
const exp = llamaTinyExpected();
const llama = new LlamaRuntime();
const errs: Record<string, number> = {};

beforeAll(async () => {
  await convertModelToGguf({ model: LLAMA_TINY, out: base, outtype: 'f32', warn: () => {} });
  await adapterToGguf({ adapter: adapterDir, base, out: loraGguf });
});
afterAll(async () => {
  await llama.close();
  fs.rmSync(dir, { recursive: true, force: true });
  console.log(`merged GGUF vs transformers' logits_merged (centered, relative): ${Object.entries(errs).map(([k, v]) => `${k} ${v.toExponential(2)}`).join(', ')}`);
});

const bytesOf = (file: string, name: string) => {
  const r = new GgufReader(file);
  try {
    return Buffer.from(r.bytes(name));
  } finally {
    r.close();
  }
};

test('merge (f32) matches logits_merged; from the peft dir and from the LoRA GGUF alike; untouched tensors copied', async () => {
  const fromPeft = path.join(dir, 'merged.gguf');
  const progress: number[] = [];
  const res = await mergeGguf({ base, adapter: adapterDir, out: fromPeft, onProgress: (d) => progress.push(d) });
  expect(res.merged.length).toBe(14);
  expect(res.copied).toBe(7);
  expect(progress).toEqual(Array.from({ length: 21 }, (_, i) => i + 1));
  const fromGguf = path.join(dir, 'merged_from_gguf.gguf');
  await mergeGguf({ base, adapter: loraGguf, out: fromGguf });
  expect(fs.readFileSync(fromGguf).equals(fs.readFileSync(fromPeft))).toBe(true);
  for (const n of ['token_embd.weight', 'output.weight', 'blk.0.attn_norm.weight']) expect(bytesOf(fromPeft, n).equals(bytesOf(base, n))).toBe(true);
  expect(bytesOf(fromPeft, 'blk.0.attn_q.weight').equals(bytesOf(base, 'blk.0.attn_q.weight'))).toBe(false);
  errs.f32 = centeredRelErr(await llama.logProbs(fromPeft, exp.ids), exp.merged, exp.vocab);
  expect(errs.f32).toBeLessThan(1e-4);
  expect(errs.f32).toBeLessThan(5e-6); // measured 4.0e-7
  await llama.unload(fromPeft);
});

test('merge into --outtype q8_0 lands within a few percent of logits_merged', async () => {
  const out = path.join(dir, 'merged_q8.gguf');
  await mergeGguf({ base, adapter: adapterDir, out, outtype: 'q8_0' });
  const r = new GgufReader(out);
  expect(r.tensor('blk.0.attn_q.weight').type).toBe(GGML.Q8_0);
  expect(r.tensor('blk.0.attn_norm.weight').type).toBe(GGML.F32);
  expect(r.getNumber('general.file_type')).toBe(7);
  r.close();
  errs.q8_0 = centeredRelErr(await llama.logProbs(out, exp.ids), exp.merged, exp.vocab);
  expect(errs.q8_0).toBeLessThan(0.05); // measured 1.3e-2
  await llama.unload(out);
});

test('outtype same keeps each tensor\'s type (a Q8_0 base re-quantizes to Q8_0); --scale 0 changes nothing', async () => {
  const q8base = path.join(dir, 'base_q8.gguf');
  await convertModelToGguf({ model: LLAMA_TINY, out: q8base, outtype: 'q8_0', warn: () => {} });
  const out = path.join(dir, 'merged_same.gguf');
  await mergeGguf({ base: q8base, adapter: loraGguf, out });
  const r = new GgufReader(out);
  expect(r.tensors.map((t) => t.type)).toEqual(new GgufReader(q8base).tensors.map((t) => t.type));
  r.close();
  const zero = path.join(dir, 'merged_zero.gguf');
  await mergeGguf({ base, adapter: adapterDir, out: zero, scale: 0 });
  expect(fs.readFileSync(zero).equals(fs.readFileSync(base))).toBe(true);
});

test('a Q5_1 base merged with outtype same stays Q5_1 and lands near logits_merged in llama.cpp', async () => {
  // llama_tiny's rows (64, 160) are not whole K-quant super-blocks of 256, so Q5_1 stands in here;
  // the K-quant merge is checked without llama.cpp in gguf_quant.test.ts
  const q51 = path.join(dir, 'base_q5_1.gguf');
  const r = new GgufReader(base);
  const specs = r.tensors.map((t) => ({ name: t.name, type: t.shape.length === 2 ? GGML.Q5_1 : t.type, shape: t.shape }));
  const w = new GgufStreamWriter(q51, [...r.metadata], specs);
  for (const t of r.tensors) w.writeFloat32(t.name, r.float32(t.name));
  w.commit();
  r.close();
  const out = path.join(dir, 'merged_q5_1.gguf');
  await mergeGguf({ base: q51, adapter: adapterDir, out, outtype: 'same', warn: (m) => { throw new Error(m); } });
  const m = new GgufReader(out);
  expect(m.tensors.map((t) => t.type)).toEqual(specs.map((s) => s.type));
  expect(m.tensor('blk.0.attn_q.weight').type).toBe(GGML.Q5_1);
  m.close();
  errs.q5_1Same = centeredRelErr(await llama.logProbs(out, exp.ids), exp.merged, exp.vocab);
  expect(errs.q5_1Same).toBeLessThan(0.1); // measured 8.2e-2: q8_0's 1.3e-2 times Q5_1/Q8_0's round-trip error ratio (≈ 7)
  await llama.unload(out);
});

test('peft → GGUF → peft gives peft\'s tensors and config back exactly', async () => {
  const back = path.join(dir, 'peft_back');
  const res = await ggufToPeft({ adapter: loraGguf, base, out: back });
  expect(res.modules).toBe(14);
  const a = SafetensorsFile.read(path.join(adapterDir, 'adapter_model.safetensors'));
  const b = SafetensorsFile.read(path.join(back, 'adapter_model.safetensors'));
  expect(b.names.sort()).toEqual(a.names.sort());
  for (const n of a.names) {
    expect(b.entry(n).shape).toEqual(a.entry(n).shape);
    expect(Buffer.from(b.float32(n).buffer).equals(Buffer.from(a.float32(n).buffer))).toBe(true);
  }
  expect(fs.readFileSync(path.join(back, 'adapter_config.json'), 'utf8')).toBe(fs.readFileSync(path.join(adapterDir, 'adapter_config.json'), 'utf8'));
});

test('a LoRA GGUF without lorakit\'s copy of the config (as other converters write it) comes back with an equivalent config', async () => {
  const plain = ggufVariant(loraGguf, path.join(dir, 'lora_plain.gguf'), { dropKeys: ['lorakit.peft_config'] });
  const back = path.join(dir, 'peft_plain');
  await ggufToPeft({ adapter: plain, base, out: back });
  const cfg = JSON.parse(fs.readFileSync(path.join(back, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
  expect(cfg).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 8, use_rslora: false, rank_pattern: {}, alpha_pattern: {} });
  expect((cfg.target_modules as string[]).length).toBe(14);
  const a = SafetensorsFile.read(path.join(adapterDir, 'adapter_model.safetensors'));
  const b = SafetensorsFile.read(path.join(back, 'adapter_model.safetensors'));
  for (const n of a.names) expect(Buffer.from(b.float32(n).buffer).equals(Buffer.from(a.float32(n).buffer))).toBe(true);
});

test('embedding and lm_head LoRA: llama.cpp at runtime agrees with lorakit\'s merge (W + s·(B·A)ᵀ for the embedding)', async () => {
  const emb = path.join(dir, 'emb_adapter');
  fs.mkdirSync(emb);
  fs.writeFileSync(path.join(emb, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['model.embed_tokens', 'lm_head'] }));
  writeSafetensors(path.join(emb, 'adapter_model.safetensors'), new Map([
    ['base_model.model.lm_head.lora_A.weight', rawF32([4, 64], 5, 0.3)],
    ['base_model.model.lm_head.lora_B.weight', rawF32([256, 4], 6, 0.3)],
    ['base_model.model.model.embed_tokens.lora_embedding_A', rawF32([4, 256], 7, 0.5)],
    ['base_model.model.model.embed_tokens.lora_embedding_B', rawF32([64, 4], 8, 0.5)],
  ]));
  const lora = path.join(dir, 'emb_lora.gguf');
  await adapterToGguf({ adapter: emb, base, out: lora });
  const r = new GgufReader(lora);
  expect(r.tensor('token_embd.weight.lora_a').shape).toEqual([256, 4]);
  expect(r.tensor('token_embd.weight.lora_b').shape).toEqual([64, 4]);
  r.close();
  const merged = path.join(dir, 'emb_merged.gguf');
  await mergeGguf({ base, adapter: emb, out: merged });
  const runtime = await llama.logProbs(base, exp.ids, { filePath: lora });
  const viaMerge = await llama.logProbs(merged, exp.ids);
  const flat = new Float32Array(viaMerge.length * exp.vocab);
  viaMerge.forEach((row, p) => flat.set(row, p * exp.vocab));
  errs.embeddingRuntimeVsMerge = centeredRelErr(runtime, flat, exp.vocab);
  expect(errs.embeddingRuntimeVsMerge).toBeLessThan(1e-5);
  expect(centeredRelErr(runtime, exp.base, exp.vocab)).toBeGreaterThan(1e-2); // the adapter does change the output
});

test('errors: a merge onto itself, a mismatched adapter, a bad outtype', async () => {
  await expect(mergeGguf({ base, adapter: adapterDir, out: base })).rejects.toThrow(/is the base file itself/);
  await expect(mergeGguf({ base, adapter: adapterDir, out: path.join(dir, 'x.gguf'), outtype: 'q4_k' as never })).rejects.toThrow(/outtype: expected one of/);
  await expect(mergeGguf({ base, adapter: base, out: path.join(dir, 'x.gguf') })).rejects.toThrow(/general.type 'model', expected 'adapter'/);
  expect(fs.existsSync(path.join(dir, 'x.gguf'))).toBe(false);
});
