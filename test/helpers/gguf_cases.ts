/** Variants of the llama_tiny adapter and of converted files, for the GGUF tests. */
import * as fs from 'fs';
import * as path from 'path';
import { GgufReader } from '../../lib/gguf/reader';
import { GgufStreamWriter } from '../../lib/gguf/writer';
import { kv } from '../../lib/gguf/metadata';
import { SafetensorsFile } from '../../lib/io/safetensors';
import { RawTensor, writeSafetensors } from '../../lib/io/safetensors_writer';

/**
 * A copy of a peft adapter dir with config edits and per-tensor value transforms
 * (`scaleB`: tensor-name regex → factor applied to matching lora_B tensors).
 */
export function adapterVariant(src: string, dst: string, configEdits: Record<string, unknown>, scaleB: Array<[RegExp, number]> = [], extra: Map<string, RawTensor> = new Map()): string {
  fs.mkdirSync(dst, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(src, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(path.join(dst, 'adapter_config.json'), JSON.stringify({ ...cfg, ...configEdits }, null, 2));
  const f = SafetensorsFile.read(path.join(src, 'adapter_model.safetensors'));
  const out = new Map<string, RawTensor>();
  for (const n of f.names) {
    const v = Float32Array.from(f.float32(n));
    for (const [re, k] of scaleB) if (re.test(n) && n.includes('lora_B')) for (let i = 0; i < v.length; i++) v[i] *= k;
    out.set(n, { dtype: 'F32', shape: f.entry(n).shape, bytes: new Uint8Array(v.buffer) });
  }
  for (const [n, t] of extra) out.set(n, t);
  writeSafetensors(path.join(dst, 'adapter_model.safetensors'), out);
  return dst;
}

/** A copy of a GGUF with some f32 tensors transformed and metadata values replaced. */
export function ggufVariant(src: string, dst: string, opts: { alpha?: number; dropKeys?: string[]; transform?: (name: string, v: Float32Array, shape: readonly number[]) => Float32Array }): string {
  const r = new GgufReader(src);
  try {
    const meta = [...r.metadata].filter(([k]) => !opts.dropKeys?.includes(k)).map(([k, e]) => [k, k === 'adapter.lora.alpha' && opts.alpha !== undefined ? kv.f32(opts.alpha) : e] as [string, typeof e]);
    const w = new GgufStreamWriter(dst, meta, r.tensors.map((t) => ({ name: t.name, type: t.type, shape: t.shape })));
    for (const t of r.tensors) w.writeFloat32(t.name, opts.transform ? opts.transform(t.name, r.float32(t.name), t.shape) : r.float32(t.name));
    w.commit();
  } finally {
    r.close();
  }
  return dst;
}

/** An F32 RawTensor of deterministic values in [-scale, scale). */
export function rawF32(shape: number[], seed: number, scale = 0.1): RawTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const v = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    v[i] = (s / 2 ** 32 - 0.5) * 2 * scale;
  }
  return { dtype: 'F32', shape, bytes: new Uint8Array(v.buffer) };
}
