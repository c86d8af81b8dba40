/**
 * node-llama-cpp (the devDependency pinned to 3.21.1) for the GGUF tests: its CPU prebuilt, a model
 * evaluated on token ids with an f32 KV cache, flash attention off and one thread (the settings
 * under which converted files match transformers to ~5e-7), and the comparison of its next-token
 * distributions with transformers' logits: log p equals the logits up to a per-position constant,
 * so both are centered per position before the relative error is taken.
 */
import * as path from 'path';
import { GOLDEN_DIR } from './golden';
import { SafetensorsFile } from '../../lib/io/safetensors';

// node-llama-cpp is an ES module; a Function-built import keeps ts-jest from turning it into require().
// eslint-disable-next-line @typescript-eslint/no-implied-eval
const importEsm = new Function('s', 'return import(s)') as (s: string) => Promise<typeof import('node-llama-cpp')>;

type Llama = Awaited<ReturnType<typeof import('node-llama-cpp')['getLlama']>>;
type LlamaModel = Awaited<ReturnType<Llama['loadModel']>>;

let llamaPromise: Promise<Llama> | null = null;
export function getLlama(): Promise<Llama> {
  llamaPromise ??= importEsm('node-llama-cpp').then((m) => m.getLlama({ gpu: false, build: 'never', logLevel: m.LlamaLogLevel.error }));
  return llamaPromise;
}

export async function loadModel(modelPath: string): Promise<LlamaModel> {
  const llama = await getLlama();
  return llama.loadModel({ modelPath, gpuLayers: 0 });
}

/** Log-probabilities of the next token after each prefix of `ids` ([position][vocab]). */
export async function evalLogProbs(model: LlamaModel, ids: number[], lora?: { filePath: string; scale?: number }): Promise<Float64Array[]> {
  const ctx = await model.createContext({
    contextSize: 64,
    batchSize: 64,
    threads: 1,
    flashAttention: false,
    experimentalKvCacheKeyType: 'F32',
    experimentalKvCacheValueType: 'F32',
    ...(lora ? { lora: { adapters: [{ filePath: lora.filePath, scale: lora.scale ?? 1 }] } } : {}),
  } as never);
  try {
    const seq = ctx.getSequence();
    const res = await seq.controlledEvaluate(ids.map((t) => [t, { generateNext: { probabilities: true } }] as never));
    return res.map((r, p) => {
      const probs = (r as { next?: { probabilities?: Map<number, number> } })?.next?.probabilities;
      if (!probs) throw new Error(`no probabilities at position ${p}`);
      const out = new Float64Array(probs.size);
      for (const [tok, pr] of probs) out[tok] = Math.log(pr);
      return out;
    });
  } finally {
    await ctx.dispose();
  }
}

function centered(rows: ArrayLike<number>[], vocab: number): Float64Array {
  const out = new Float64Array(rows.length * vocab);
  rows.forEach((r, p) => {
    let mean = 0;
    for (let i = 0; i < vocab; i++) mean += r[i];
    mean /= vocab;
    for (let i = 0; i < vocab; i++) out[p * vocab + i] = r[i] - mean;
  });
  return out;
}

/** ‖centered(got) − centered(want)‖ / ‖centered(want)‖ over all positions. */
export function centeredRelErr(got: Float64Array[], want: Float32Array, vocab: number): number {
  const rows: Float32Array[] = [];
  for (let p = 0; p < got.length; p++) rows.push(want.subarray(p * vocab, (p + 1) * vocab));
  const a = centered(got, vocab);
  const b = centered(rows, vocab);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

export const LLAMA_TINY = path.join(GOLDEN_DIR, 'llama_tiny');

/** input_ids and transformers' logits of the llama_tiny case. */
export function llamaTinyExpected(): { ids: number[]; base: Float32Array; lora: Float32Array; merged: Float32Array; vocab: number } {
  const f = SafetensorsFile.read(path.join(LLAMA_TINY, 'expected.safetensors'));
  const idsT = f.tensor('input_ids');
  const ids = Array.from(idsT.toBigInt64Array(), Number);
  idsT.dispose();
  const vocab = f.entry('logits_base').shape[1];
  return { ids, base: f.float32('logits_base'), lora: f.float32('logits_lora'), merged: f.float32('logits_merged'), vocab };
}
