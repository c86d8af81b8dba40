/**
 * Each architecture lib/gguf converts, on a tiny random checkpoint laid out as transformers saves
 * it: the converted base loads and evaluates in node-llama-cpp, and the adapter applied at runtime
 * by llama.cpp agrees with lorakit's merge of it (relative error ≤ 1e-5 on the centered logits), so
 * tensor names, shapes, hyperparameter keys and the Q/K permutation of lora_B fit llama.cpp's
 * reading of them. (Logits against transformers for these come from make_gguf_cases.py's cases.)
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adapterToGguf } from '../lib/gguf/adapter_to_gguf';
import { convertModelToGguf } from '../lib/gguf/convert_model';
import { mergeGguf } from '../lib/gguf/merge';
import { GgufReader } from '../lib/gguf/reader';
import { LlamaRuntime, centeredRelErr } from './helpers/llama_runtime';
import { SYNTHETIC_ARCHS, writeSyntheticModel } from './helpers/synthetic_hf';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-gguf-synth-'));
const llama = new LlamaRuntime();
const report: string[] = [];
afterAll(async () => {
  await llama.close();
  fs.rmSync(dir, { recursive: true, force: true });
  console.log(`runtime LoRA vs lorakit's merge, per architecture: ${report.join(', ')}`);
});

const IDS = [5, 17, 99, 3, 264, 120, 7, 42];

test.each([...SYNTHETIC_ARCHS])('%s: converted base loads; runtime LoRA = merged', async (arch) => {
  const src = path.join(dir, arch);
  const { vocab } = writeSyntheticModel(arch, src);
  const base = path.join(dir, `${arch}.gguf`);
  const lora = path.join(dir, `${arch}.lora.gguf`);
  const merged = path.join(dir, `${arch}.merged.gguf`);
  await convertModelToGguf({ model: src, out: base, outtype: 'f32', warn: () => {} });
  await adapterToGguf({ adapter: path.join(src, 'adapter'), base, out: lora });
  await mergeGguf({ base, adapter: path.join(src, 'adapter'), out: merged });
  const r = new GgufReader(base);
  const tied = !r.has('output.weight');
  r.close();
  expect(tied).toBe(['qwen2', 'gemma', 'gemma2'].includes(arch));
  const plain = await llama.logProbs(base, IDS);
  const runtime = await llama.logProbs(base, IDS, { filePath: lora });
  await llama.unload(base);
  const viaMerge = await llama.logProbs(merged, IDS);
  await llama.unload(merged);
  const flat = (rows: Float64Array[]) => {
    const out = new Float32Array(rows.length * vocab);
    rows.forEach((row, p) => out.set(row, p * vocab));
    return out;
  };
  const agree = centeredRelErr(runtime, flat(viaMerge), vocab);
  const moved = centeredRelErr(runtime, flat(plain), vocab);
  report.push(`${arch} ${agree.toExponential(1)} (adapter moves ${moved.toFixed(2)})`);
  expect(plain.every((row) => row.every(Number.isFinite))).toBe(true);
  expect(agree).toBeLessThan(1e-5);
  expect(moved).toBeGreaterThan(1e-2);
});
