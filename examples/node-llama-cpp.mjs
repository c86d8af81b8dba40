#!/usr/bin/env node
// A peft LoRA adapter in, node-llama-cpp generating with it out: the Hugging Face base model is
// converted to GGUF, the adapter to a llama.cpp LoRA GGUF (applied at runtime) and, separately,
// merged into the base; both are loaded in node-llama-cpp and generate greedily from the same prompt.
//
//   npm run build:ts && node examples/node-llama-cpp.mjs [--model HF_DIR] [--adapter PEFT_DIR]
//        [--prompt "text" | --prompt-ids 1,2,3] [--tokens 16] [--outtype f32|f16|bf16|q8_0|q4_0] [--work DIR]
//        [--gpu false] [--threads N]
//
// Without arguments it uses the golden llama_tiny case (../shared/golden): a 2-layer Llama with no
// tokenizer (lorakit writes a placeholder vocabulary), so it prompts with token ids.
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';

const require = createRequire(import.meta.url);
const lorakit = require('../dist/index.js');
const here = path.dirname(fileURLToPath(import.meta.url));

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const golden = process.env.LORAKIT_GOLDEN ?? path.resolve(here, '..', '..', 'shared', 'golden');
const modelDir = opt('model', path.join(golden, 'llama_tiny'));
const adapterDir = opt('adapter', path.join(modelDir, 'adapter'));
const nTokens = Number(opt('tokens', 16));
const outtype = opt('outtype', 'f32');
const work = opt('work', fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-example-')));
fs.mkdirSync(work, { recursive: true });

// 1. The files node-llama-cpp loads.
const base = path.join(work, `base-${outtype}.gguf`);
const lora = path.join(work, 'adapter.gguf');
const merged = path.join(work, `merged-${outtype}.gguf`);
await lorakit.convertModelToGguf({ model: modelDir, out: base, outtype });
const conv = await lorakit.adapterToGguf({ adapter: adapterDir, base, out: lora });
console.log(`adapter: ${conv.pairs} modules, adapter.lora.alpha = ${conv.alpha} (llama.cpp's alpha/r = peft's scaling)`);
await lorakit.mergeGguf({ base, adapter: adapterDir, out: merged });
console.log(`wrote ${base}\n      ${lora}\n      ${merged}`);

// 2. Generation: the base with the LoRA applied at runtime, then the merged model.
// build: 'never' uses the prebuilt binaries only (no compile step); gpu defaults to 'auto'
const llama = await getLlama({ build: 'never', gpu: opt('gpu', 'auto') === 'false' ? false : 'auto', logLevel: LlamaLogLevel.error });

async function generate(modelPath, loraPath) {
  const model = await llama.loadModel({ modelPath });
  const context = await model.createContext({
    contextSize: 256,
    ...(opt('threads') !== undefined ? { threads: Number(opt('threads')) } : {}),
    ...(loraPath ? { lora: { adapters: [{ filePath: loraPath, scale: 1 }] } } : {}),
  });
  const prompt = opt('prompt') !== undefined
    ? model.tokenize(opt('prompt'))
    : (opt('prompt-ids') ?? '153,191,80,91,81,183').split(',').map(Number);
  const out = [];
  for await (const token of context.getSequence().evaluate(prompt, { temperature: 0 })) {
    out.push(token);
    if (out.length >= nTokens) break;
  }
  const text = model.detokenize(out);
  await context.dispose();
  await model.dispose();
  return { prompt, out, text };
}

const runtime = await generate(base, lora);
const viaMerge = await generate(merged, null);
const plain = await generate(base, null);
console.log(`prompt ids:              ${runtime.prompt.join(' ')}`);
console.log(`base + runtime LoRA:     ${runtime.out.join(' ')}`);
console.log(`merged model:            ${viaMerge.out.join(' ')}`);
console.log(`base alone (no adapter): ${plain.out.join(' ')}`);
if (opt('prompt') !== undefined) console.log(`text (runtime LoRA): ${JSON.stringify(runtime.text)}`);
const same = runtime.out.every((t, i) => t === viaMerge.out[i]);
console.log(same ? 'runtime LoRA and merged model generate the same tokens' : 'runtime LoRA and merged model differ (expected only with a quantized --outtype)');
