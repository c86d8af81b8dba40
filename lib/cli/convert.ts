/**
 * `lorakit convert`: peft adapters ↔ llama.cpp LoRA GGUFs, and Hugging Face checkpoints → GGUF bases.
 */
import { adapterToGguf } from '../gguf/adapter_to_gguf';
import { ggufToPeft } from '../gguf/adapter_from_gguf';
import { convertModelToGguf } from '../gguf/convert_model';
import { parseArgs, progressBar } from './_args';

export const summary = 'convert a peft adapter to a llama.cpp LoRA GGUF and back, or a Hugging Face model to a GGUF base';

const USAGE = `usage: lorakit convert --to gguf --adapter <peft dir> (--base <base.gguf> | --base-config <config.json>) --out <adapter.gguf> [--outtype T]
       lorakit convert --to peft --adapter <adapter.gguf> --base <base.gguf> --out <peft dir>
       lorakit convert --to gguf --model <hf model dir> --out <base.gguf> [--outtype T]
A peft adapter becomes a llama.cpp LoRA adapter (general.type adapter, llama.cpp's tensor names, Q/K
rows of lora_B permuted where the base's are, adapter.lora.alpha chosen so llama.cpp's alpha/r equals
peft's scaling, rsLoRA included); --to peft is the way back. --model converts a Hugging Face checkpoint
(config.json + safetensors, sharded too) of llama, mistral, qwen2, qwen3, gemma, gemma2 or phi3 to a
GGUF base node-llama-cpp loads. DoRA, and embedding LoRA on bases that tie the output to the
embedding, are refused.
  --base FILE         the GGUF base the adapter is for (architecture, head counts, shapes checked)
  --base-config FILE  instead of --base: the base model's config.json (no shape check)
  --outtype T         adapter: f32 (default), f16 or bf16; model: 2-D weights in f16 (default, as
                      llama.cpp's converter), f32, bf16, q8_0 or q4_0 (1-D tensors stay f32)
  --quiet             no progress bar and no summary line (default: both, the bar on a TTY only)

examples:
  lorakit convert --to gguf --model ./Llama-3.2-1B --out base.gguf --outtype q8_0
  lorakit convert --to gguf --adapter ./my-adapter --base base.gguf --out adapter.gguf
  lorakit convert --to peft --adapter adapter.gguf --base base.gguf --out ./my-adapter-again`;

export async function run(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(USAGE);
    return 0;
  }
  let args;
  try {
    args = parseArgs(argv, ['to', 'adapter', 'base', 'base-config', 'model', 'out', 'outtype'], ['quiet']);
  } catch (e) {
    console.error(`lorakit convert: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  const v = (k: string) => args.values.get(k);
  const to = v('to');
  const usageError = (msg: string) => {
    console.error(`lorakit convert: ${msg}\n${USAGE}`);
    return 2;
  };
  if (args.positional.length) return usageError(`unexpected argument '${args.positional[0]}'`);
  if (to !== 'gguf' && to !== 'peft') return usageError(`--to must be gguf or peft, got ${to === undefined ? 'nothing' : `'${to}'`}`);
  if (!v('out')) return usageError('missing --out');
  const quiet = args.flags.has('quiet');
  const bar = progressBar('converting');
  const onProgress = quiet ? undefined : (d: number, t: number, n: string) => bar.update(d, t, n);
  const t0 = Date.now();
  const secs = () => ((Date.now() - t0) / 1000).toFixed(1);
  try {
    if (to === 'gguf' && v('model') !== undefined) {
      if (v('adapter') !== undefined || v('base') !== undefined || v('base-config') !== undefined) return usageError('--model converts a base model; it takes no --adapter, --base or --base-config');
      const res = await convertModelToGguf({ model: v('model')!, out: v('out')!, outtype: (v('outtype') ?? 'f16') as never, onProgress });
      bar.end();
      if (!quiet) console.log(`wrote ${res.out}: ${res.architecture}, ${res.tensors} tensors, ${(res.bytesWritten / 2 ** 20).toFixed(1)} MiB in ${secs()} s`);
      return 0;
    }
    if (!v('adapter')) return usageError('missing --adapter (or --model for a base model)');
    if (to === 'gguf') {
      if ((v('base') === undefined) === (v('base-config') === undefined)) return usageError('give one of --base <base.gguf> or --base-config <config.json>');
      const res = await adapterToGguf({ adapter: v('adapter')!, base: v('base'), baseConfig: v('base-config'), out: v('out')!, outtype: (v('outtype') ?? 'f32') as never, onProgress });
      bar.end();
      if (!quiet) {
        console.log(`wrote ${res.out}: LoRA for ${res.architecture}, ${res.pairs} modules, adapter.lora.alpha = ${res.alpha} in ${secs()} s`);
        if (res.folded.length) console.log(`  ${res.folded.length} module(s) with another scaling had it folded into lora_b: ${res.folded.slice(0, 4).join(', ')}${res.folded.length > 4 ? ', ...' : ''}`);
      }
      return 0;
    }
    if (!v('base')) return usageError('--to peft needs --base <base.gguf>');
    if (v('outtype') !== undefined || v('base-config') !== undefined) return usageError('--to peft takes no --outtype or --base-config');
    const res = await ggufToPeft({ adapter: v('adapter')!, base: v('base')!, out: v('out')! });
    if (!quiet) console.log(`wrote ${res.out}: peft adapter with ${res.modules} modules in ${secs()} s`);
    return 0;
  } catch (e) {
    bar.end();
    console.error(`lorakit convert: ${(e as Error).message}`);
    return 1;
  }
}
