/** The GGUF side of `lorakit merge` and `lorakit inspect` (called when the file is a .gguf). */
import * as fs from 'fs';
import { formatValue } from '../gguf/metadata';
import { mergeGguf } from '../gguf/merge';
import { GgufReader } from '../gguf/reader';
import { mergeArgs, runMerge } from './_args';

export const GGUF_MERGE_USAGE = `usage with a GGUF base: lorakit merge --base <base.gguf> --adapter <adapter> --out <merged.gguf>
                        [--outtype same|f32|f16|bf16|q8_0|q4_0] [--scale s] [--quiet]
Each targeted weight is read in row chunks, dequantized, merged in f32 and encoded again; the other
tensors and the metadata are copied as they are. Streams with bounded memory.
  --adapter A     a peft adapter folder, or a llama.cpp LoRA adapter (.gguf, e.g. from lorakit convert)
  --outtype T     type of 2-D weights: same (default: each merged weight is re-quantized to its own
                  type, K-quants included), f32, f16, bf16, q8_0 or q4_0
  --scale S       multiplies the adapter's scaling (llama.cpp's LoRA scale; default 1)

example:
  lorakit merge --base base-q8_0.gguf --adapter ./my-adapter --out merged-q8_0.gguf`;

/** True when argv's --base names a .gguf file. */
export function ggufBase(argv: string[]): boolean {
  const i = argv.indexOf('--base');
  const v = i >= 0 ? argv[i + 1] : argv.find((a) => a.startsWith('--base='))?.slice(7);
  return typeof v === 'string' && v.toLowerCase().endsWith('.gguf');
}

export async function ggufMerge(argv: string[]): Promise<number> {
  const parsed = mergeArgs(argv, ['base', 'adapter', 'out', 'outtype', 'scale'], GGUF_MERGE_USAGE);
  if (!parsed) return 2;
  const { args, scale } = parsed;
  return runMerge(
    args.flags.has('quiet'),
    (onProgress) =>
      mergeGguf({
        base: args.values.get('base')!,
        adapter: args.values.get('adapter')!,
        out: args.values.get('out')!,
        outtype: (args.values.get('outtype') ?? 'same') as never,
        scale,
        onProgress,
      }),
    (res, s) => `merged ${res.merged.length} weights (${res.copied} of ${res.tensors} tensors copied as they were), ${(res.bytesWritten / 2 ** 20).toFixed(1)} MiB in ${s} s: ${res.out}`,
  );
}

/** A GGUF file: by extension, or by its magic for files named otherwise. */
export function isGguf(p: string): boolean {
  if (p.toLowerCase().endsWith('.gguf')) return true;
  try {
    if (!fs.statSync(p).isFile()) return false;
    const fd = fs.openSync(p, 'r');
    const b = Buffer.alloc(4);
    fs.readSync(fd, b, 0, 4, 0);
    fs.closeSync(fd);
    return b.toString('latin1') === 'GGUF';
  } catch {
    return false;
  }
}

const fmt = (n: number) => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');

export function inspectGguf(p: string, all: boolean, json: boolean): number {
  const r = new GgufReader(p);
  try {
    const byType = new Map<string, number>();
    for (const t of r.tensors) byType.set(t.typeName, (byType.get(t.typeName) ?? 0) + t.numel);
    const params = r.tensors.reduce((s, t) => s + t.numel, 0);
    if (json) {
      const meta = Object.fromEntries([...r.metadata].map(([k, e]) => [k, { type: e.type, value: formatValue(e.value, all ? 1e6 : 200) }]));
      const tensors = r.tensors.map((t) => ({ name: t.name, type: t.typeName, shape: t.shape, offset: t.offset, bytes: t.nbytes }));
      console.log(JSON.stringify({ kind: 'gguf', version: r.version, alignment: r.alignment, metadata: meta, params, byType: Object.fromEntries(byType), tensors }));
      return 0;
    }
    console.log(`gguf ${p} (version ${r.version}, alignment ${r.alignment}, ${fmt(r.fileSize)} bytes)`);
    console.log(`metadata (${r.metadata.size}):`);
    for (const [k, e] of r.metadata) console.log(`  ${k.padEnd(44)} ${e.type.padEnd(6)} ${formatValue(e.value, all ? 400 : 80)}`);
    console.log(`tensors: ${r.tensors.length}, parameters: ${fmt(params)} (${[...byType].map(([d, n]) => `${d} ${fmt(n)}`).join(', ')})`);
    const shown = all ? r.tensors : r.tensors.slice(0, 40);
    const w = Math.min(60, Math.max(4, ...shown.map((t) => t.name.length)));
    for (const t of shown) console.log(`  ${t.name.padEnd(w)}  ${t.typeName.padEnd(5)} [${t.shape.join(', ')}]`);
    if (shown.length < r.tensors.length) console.log(`  ... ${r.tensors.length - shown.length} more (--all lists them)`);
    return 0;
  } finally {
    r.close();
  }
}
