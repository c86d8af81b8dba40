/**
 * node-llama-cpp (the devDependency pinned to 3.21.1) for the GGUF tests: its CPU prebuilt, a model
 * evaluated on token ids with an f32 KV cache, flash attention off and one thread (the settings
 * under which converted files match transformers to ~5e-7), and the comparison of its next-token
 * distributions with transformers' logits: log p equals the logits up to a per-position constant,
 * so both are centered per position before the relative error is taken.
 */
import { ChildProcessWithoutNullStreams, spawn } from 'child_process';
import * as path from 'path';
import * as readline from 'readline';
import { GOLDEN_DIR } from './golden';
import { SafetensorsFile } from '../../lib/io/safetensors';

/** node-llama-cpp running in a child process (test/helpers/llama_child.mjs); models stay loaded per path. */
export class LlamaRuntime {
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #pending = new Map<number, { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }>();
  #next = 0;
  #stderr = '';

  constructor() {
    this.#child = spawn(process.execPath, [path.join(__dirname, 'llama_child.mjs')], { cwd: path.join(__dirname, '..', '..'), stdio: 'pipe' });
    this.#child.stderr.on('data', (d: Buffer) => (this.#stderr = (this.#stderr + d.toString()).slice(-4000)));
    readline.createInterface({ input: this.#child.stdout }).on('line', (line) => {
      if (!line.startsWith('@@')) return;
      const msg = JSON.parse(line.slice(2)) as Record<string, unknown>;
      const p = this.#pending.get(msg.id as number);
      this.#pending.delete(msg.id as number);
      if (msg.error) p?.reject(new Error(`node-llama-cpp: ${String(msg.error)}\n${this.#stderr.slice(-1500)}`));
      else p?.resolve(msg);
    });
    this.#child.on('exit', (code, signal) => {
      for (const p of this.#pending.values()) p.reject(new Error(`node-llama-cpp child exited (${code ?? signal})\n${this.#stderr.slice(-1500)}`));
      this.#pending.clear();
    });
  }

  #request(req: Record<string, unknown>): Promise<Record<string, unknown>> {
    const id = this.#next++;
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return Promise.reject(new Error(`node-llama-cpp child has exited\n${this.#stderr.slice(-1500)}`));
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#child.stdin.write(`${JSON.stringify({ ...req, id })}\n`);
    });
  }

  /** Log-probabilities of the next token after each prefix of `ids` ([position][vocab]). */
  async logProbs(model: string, ids: number[], lora?: { filePath: string; scale?: number }): Promise<Float64Array[]> {
    const res = await this.#request({ op: 'eval', model, ids, lora });
    return (res.logprobs as number[][]).map((r) => Float64Array.from(r));
  }

  async tokenize(model: string, text: string, special = false): Promise<number[]> {
    return (await this.#request({ op: 'tokenize', model, text, special })).tokens as number[];
  }

  async unload(model: string): Promise<void> {
    await this.#request({ op: 'unload', model });
  }

  async close(): Promise<void> {
    if (this.#child.exitCode !== null) return;
    const done = new Promise((r) => this.#child.once('exit', r));
    this.#child.stdin.end();
    await done;
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
