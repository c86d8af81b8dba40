// node-llama-cpp in a child process for the jest tests (it is an ES module, which jest's VM cannot
// import without --experimental-vm-modules; a child also keeps a llama.cpp abort out of jest).
// Protocol: one JSON request per stdin line, one '@@'-prefixed JSON answer per stdout line.
//   { id, op: 'eval', model, ids, lora?: { filePath, scale } } → { id, logprobs: number[][] }
//   { id, op: 'tokenize', model, text } → { id, tokens: number[] }
//   { id, op: 'unload', model } → { id }
import * as readline from 'node:readline';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';

const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const models = new Map();
const send = (o) => process.stdout.write(`@@${JSON.stringify(o)}\n`);

async function model(path) {
  if (!models.has(path)) models.set(path, await llama.loadModel({ modelPath: path, gpuLayers: 0 }));
  return models.get(path);
}

async function evaluate(req) {
  const m = await model(req.model);
  const ctx = await m.createContext({
    contextSize: 64, batchSize: 64, threads: 1, flashAttention: false,
    experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32',
    ...(req.lora ? { lora: { adapters: [{ filePath: req.lora.filePath, scale: req.lora.scale ?? 1 }] } } : {}),
  });
  try {
    const res = await ctx.getSequence().controlledEvaluate(req.ids.map((t) => [t, { generateNext: { probabilities: true } }]));
    return res.map((r, p) => {
      const probs = r?.next?.probabilities;
      if (!probs) throw new Error(`no probabilities at position ${p}`);
      const out = new Array(probs.size);
      for (const [tok, pr] of probs) out[tok] = Math.log(pr);
      return out;
    });
  } finally {
    await ctx.dispose();
  }
}

for await (const line of readline.createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const req = JSON.parse(line);
  try {
    if (req.op === 'eval') send({ id: req.id, logprobs: await evaluate(req) });
    else if (req.op === 'tokenize') send({ id: req.id, tokens: Array.from((await model(req.model)).tokenize(req.text, req.special ?? false)) });
    else if (req.op === 'unload') {
      await models.get(req.model)?.dispose();
      models.delete(req.model);
      send({ id: req.id });
    } else throw new Error(`unknown op ${req.op}`);
  } catch (e) {
    send({ id: req.id, error: String(e?.message ?? e) });
  }
}
