/** `lorakit merge`: merges a peft adapter into a safetensors checkpoint, streaming tensor by tensor. */
import { FloatDType } from '../dtype';
import { mergeCheckpoint } from '../model/stream_merge';
import { parseArgs, progressBar } from './_args';
import { GGUF_MERGE_USAGE, ggufBase, ggufMerge } from './_gguf';

export const summary = 'merge a peft LoRA adapter into a .safetensors checkpoint or a GGUF base (streamed)';

const USAGE =
  'usage: lorakit merge --base <file.safetensors | dir with shards> --adapter <adapter dir> --out <file | dir>\n' +
  '                     [--dtype f32|f16|bf16] [--scale s] [--quiet]';

export async function run(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(`${USAGE}\n${GGUF_MERGE_USAGE.replace('usage: ', '       ')}`);
    return 0;
  }
  if (ggufBase(argv)) return ggufMerge(argv);
  let args;
  try {
    args = parseArgs(argv, ['base', 'adapter', 'out', 'dtype', 'scale'], ['quiet']);
  } catch (e) {
    console.error(`lorakit merge: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  const missing = ['base', 'adapter', 'out'].filter((k) => !args.values.has(k));
  if (missing.length || args.positional.length) {
    console.error(`lorakit merge: ${missing.length ? `missing ${missing.map((m) => `--${m}`).join(', ')}` : `unexpected argument '${args.positional[0]}'`}\n${USAGE}`);
    return 2;
  }
  const dtype = args.values.get('dtype');
  if (dtype !== undefined && !['f32', 'f16', 'bf16'].includes(dtype)) {
    console.error(`lorakit merge: --dtype must be f32, f16 or bf16, got '${dtype}'`);
    return 2;
  }
  const scaleText = args.values.get('scale');
  const scale = scaleText === undefined ? 1 : Number(scaleText);
  if (!Number.isFinite(scale) || scaleText?.trim() === '') {
    console.error(`lorakit merge: --scale must be a finite number, got '${scaleText}'`);
    return 2;
  }
  const quiet = args.flags.has('quiet');
  const bar = progressBar('merging');
  const t0 = Date.now();
  try {
    const res = await mergeCheckpoint({
      base: args.values.get('base')!,
      adapter: args.values.get('adapter')!,
      out: args.values.get('out')!,
      dtype: dtype as FloatDType | undefined,
      scale,
      onProgress: quiet ? undefined : (d, t, n) => bar.update(d, t, n),
    });
    bar.end();
    if (!quiet)
      console.log(`merged ${res.merged.length} weights, wrote ${res.tensors} tensors (${(res.bytesWritten / 2 ** 20).toFixed(1)} MiB) in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${res.files.join(', ')}`);
    return 0;
  } catch (e) {
    bar.end();
    console.error(`lorakit merge: ${(e as Error).message}`);
    return 1;
  }
}
