/** `lorakit demo` (also `npm run demo`): fine-tune LoRA on a small frozen network, end to end. */
import { runDemo } from '../demo/run';

export const summary = 'train LoRA on a small frozen MLP from a seed (no downloads), merge, time, plot';

const USAGE = `usage: lorakit demo [--steps N] [--out DIR] [--seed N] [--device cpu|cuda] [--quantize FORMAT] [--no-png]
  --steps N      optimizer steps (default 400)
  --out DIR      output directory (default ./lorakit-demo-out)
  --seed N       seed for weights, data and adapters (default 0)
  --device D     cpu (default) or cuda
  --quantize F   store the frozen base quantized and train LoRA on it (QLoRA): nf4, fp4, int8,
                 q8_0, q4_0, q4_k or q6_k (default: a float base)
  --no-png       do not try to render the loss curve as PNG (default: render it when rsvg-convert,
                 ImageMagick or inkscape is installed)

examples:
  lorakit demo
  lorakit demo --steps 1000 --seed 3 --out /tmp/lorakit-demo
  lorakit demo --quantize nf4`;

export async function run(argv: string[]): Promise<number> {
  const opts: Parameters<typeof runDemo>[0] = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a}: expects a value\n${USAGE}`);
      return v;
    };
    const int = (v: string): number => {
      if (!/^\d+$/.test(v)) throw new Error(`${a}: expected a non-negative integer, got '${v}'`);
      return Number(v);
    };
    if (a === '--steps') opts.steps = int(next());
    else if (a === '--out') opts.outDir = next();
    else if (a === '--seed') opts.seed = int(next());
    else if (a === '--device') opts.device = next() as 'cpu' | 'cuda';
    else if (a === '--quantize') opts.quantize = next() as NonNullable<typeof opts.quantize>;
    else if (a === '--no-png') opts.png = false;
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      return 0;
    } else {
      console.error(`lorakit demo: unknown option '${a}'\n${USAGE}`);
      return 2;
    }
  }
  if (opts.steps !== undefined && opts.steps < 20) throw new Error('--steps: at least 20 (the loss drop compares the first and last 10 steps)');
  const res = await runDemo(opts);
  if (!(res.lossDrop >= 10)) {
    console.error(`lorakit demo: the loss fell only ${res.lossDrop.toFixed(1)}x (expected at least 10x)`);
    return 1;
  }
  if (res.quantizedBytesRestored === false) {
    console.error('lorakit demo: unmerge did not give the quantized base its bytes back');
    return 1;
  }
  if (!(res.mergeRelErr <= 1e-5)) {
    console.error(`lorakit demo: merged outputs differ from unmerged ones by ${res.mergeRelErr.toExponential(2)} (expected <= 1e-5)`);
    return 1;
  }
  return 0;
}
