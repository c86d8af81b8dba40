/**
 * Every golden case of a converted architecture (shared/golden/<arch>_tiny with config.json, a peft
 * adapter/ and expected.safetensors: llama_tiny, and those scripts/golden/make_gguf_cases.py makes for
 * mistral, qwen2, qwen3, gemma2, phi3): base → GGUF, adapter → llama.cpp LoRA, merged GGUF, each run
 * in node-llama-cpp against transformers' logits (centered, relative error ≤ 1e-4).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adapterToGguf } from '../lib/gguf/adapter_to_gguf';
import { SUPPORTED_MODEL_TYPES } from '../lib/gguf/arch';
import { convertModelToGguf } from '../lib/gguf/convert_model';
import { mergeGguf } from '../lib/gguf/merge';
import { SafetensorsFile } from '../lib/io/safetensors';
import { GOLDEN_DIR } from './helpers/golden';
import { LlamaRuntime, centeredRelErr } from './helpers/llama_runtime';

function cases(): string[] {
  return fs
    .readdirSync(GOLDEN_DIR)
    .filter((d) => ['config.json', 'adapter', 'expected.safetensors'].every((f) => fs.existsSync(path.join(GOLDEN_DIR, d, f))))
    .filter((d) => SUPPORTED_MODEL_TYPES.includes((JSON.parse(fs.readFileSync(path.join(GOLDEN_DIR, d, 'config.json'), 'utf8')) as { model_type: string }).model_type))
    .sort();
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-gguf-archs-'));
const llama = new LlamaRuntime();
const report: string[] = [];
afterAll(async () => {
  await llama.close();
  fs.rmSync(dir, { recursive: true, force: true });
  console.log(`golden cases through node-llama-cpp (base / runtime LoRA / merged): ${report.join('; ')}`);
});

test('the llama_tiny case is among them', () => expect(cases()).toContain('llama_tiny'));

test.each(cases())('%s: base, runtime LoRA and merged GGUF match transformers', async (name) => {
  const src = path.join(GOLDEN_DIR, name);
  const f = SafetensorsFile.read(path.join(src, 'expected.safetensors'));
  const idsT = f.tensor('input_ids');
  const ids = Array.from(idsT.toBigInt64Array(), Number);
  idsT.dispose();
  const vocab = f.entry('logits_base').shape[1];
  const base = path.join(dir, `${name}.gguf`);
  const lora = path.join(dir, `${name}.lora.gguf`);
  const merged = path.join(dir, `${name}.merged.gguf`);
  await convertModelToGguf({ model: src, out: base, outtype: 'f32', warn: () => {} });
  await adapterToGguf({ adapter: path.join(src, 'adapter'), base, out: lora });
  await mergeGguf({ base, adapter: path.join(src, 'adapter'), out: merged });
  const eBase = centeredRelErr(await llama.logProbs(base, ids), f.float32('logits_base'), vocab);
  const eLora = centeredRelErr(await llama.logProbs(base, ids, { filePath: lora }), f.float32('logits_lora'), vocab);
  await llama.unload(base);
  const eMerged = centeredRelErr(await llama.logProbs(merged, ids), f.float32('logits_merged'), vocab);
  await llama.unload(merged);
  report.push(`${name} ${[eBase, eLora, eMerged].map((e) => e.toExponential(1)).join(' / ')}`);
  expect({ base: eBase < 1e-4, lora: eLora < 1e-4, merged: eMerged < 1e-4 }).toEqual({ base: true, lora: true, merged: true });
});
