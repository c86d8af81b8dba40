/** `lorakit merge`: merges a peft adapter into a safetensors checkpoint (or, for a .gguf base, a GGUF: _gguf.ts), streaming tensor by tensor. */
import { FloatDType } from '../dtype';
import { mergeCheckpoint } from '../model/stream_merge';
import { mergeArgs, runMerge } from './_args';
import { GGUF_MERGE_USAGE, ggufBase, ggufMerge } from './_gguf';

export const summary = 'merge a peft LoRA adapter into a .safetensors checkpoint or a GGUF base (streamed)';

const USAGE = `usage: lorakit merge --base <model> --adapter <adapter dir> --out <path> [--dtype f32|f16|bf16] [--scale s] [--quiet]
Writes W + scale·(lora_alpha/r)·B·A for every weight the adapter targets (DoRA: its rescaled form),
computed in f32 and rounded once; other tensors are copied. Streams tensor by tensor.
  --base PATH     a .safetensors file, or a model folder (model.safetensors, a sharded
                  model.safetensors.index.json, or a single .safetensors file)
  --adapter DIR   the adapter folder peft's save_pretrained wrote (adapter_config.json + adapter_model.safetensors)
  --out PATH      a file when --base is a file; a folder when --base is a folder: the merged weights
                  keep their file names and sharding, and config.json, the tokenizer and other small
                  files are copied
  --dtype D       output dtype of float tensors: f32, f16 or bf16 (default: each tensor keeps its
                  own dtype; integer tensors are never converted)
  --scale S       multiplies the adapter's scaling lora_alpha/r, as peft's set_scale (default 1: the
                  adapter as trained; 0.5: half its effect; 0: the base unchanged)
  --quiet         no progress bar and no summary line (default: both, the bar on a TTY only)

examples:
  lorakit merge --base model.safetensors --adapter ./my-adapter --out merged.safetensors
  lorakit merge --base ./Qwen2.5-0.5B --adapter ./my-adapter --out ./Qwen2.5-0.5B-merged --dtype bf16`;

export async function run(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(`${USAGE}\n\n${GGUF_MERGE_USAGE}`);
    return 0;
  }
  if (ggufBase(argv)) return ggufMerge(argv);
  const parsed = mergeArgs(argv, ['base', 'adapter', 'out', 'dtype', 'scale'], USAGE);
  if (!parsed) return 2;
  const { args, scale } = parsed;
  const dtype = args.values.get('dtype');
  if (dtype !== undefined && !['f32', 'f16', 'bf16'].includes(dtype)) {
    console.error(`lorakit merge: --dtype must be f32, f16 or bf16, got '${dtype}'`);
    return 2;
  }
  return runMerge(
    args.flags.has('quiet'),
    (onProgress) =>
      mergeCheckpoint({
        base: args.values.get('base')!,
        adapter: args.values.get('adapter')!,
        out: args.values.get('out')!,
        dtype: dtype as FloatDType | undefined,
        scale,
        onProgress,
      }),
    (res, s) => `merged ${res.merged.length} weights, wrote ${res.tensors} tensors (${(res.bytesWritten / 2 ** 20).toFixed(1)} MiB) in ${s} s: ${res.files.join(', ')}`,
  );
}
