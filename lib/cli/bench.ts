/** `lorakit bench`: times the CPU kernels against the machine's ceilings and OpenBLAS; writes JSON. */
import { BenchDType, BenchOp, BenchOptions, bench, formatTable } from '../bench';

export const summary = 'benchmark the CPU kernels (table + JSON in bench/results/); --help for options';

const HELP = `usage: lorakit bench [options]
  --quick               small grid (d 1024,4096; r 16; n 1,128), short timings
  --d LIST              hidden sizes (default 1024,4096)
  --r LIST              ranks (default 8,16,64)
  --n LIST              tokens per call (default 1,16,128,512)
  --dtype LIST          f32,bf16 (default both)
  --op LIST             gemm,forward,fwdbwd,merge (default all)
  --threads N           pool threads (default: all cores)
  --min-time S          seconds of timing per row (default 1, quick 0.3)
  --no-reference        skip the OpenBLAS reference
  --openblas PATH       OpenBLAS shared library to compare with
  --coretype NAME       OPENBLAS_CORETYPE for the reference (default: from the CPU flags)
  --out DIR             results directory (default bench/results)
  --no-save             do not write a results file
  --json                print the JSON result instead of the table`;

function list(v: string | undefined, flag: string): string[] {
  if (!v || v.startsWith('--')) throw new Error(`${flag}: expected a comma-separated list`);
  return v.split(',').map((s) => s.trim()).filter(Boolean);
}

function ints(v: string | undefined, flag: string): number[] {
  return list(v, flag).map((s) => {
    const x = Number(s);
    if (!Number.isInteger(x) || x < 1) throw new Error(`${flag}: '${s}' is not a positive integer`);
    return x;
  });
}

export async function run(argv: string[]): Promise<number> {
  const o: BenchOptions = { command: `lorakit bench ${argv.join(' ')}`.trim() };
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    switch (a) {
      case '--help':
      case '-h':
        console.log(HELP);
        return 0;
      case '--quick': o.quick = true; break;
      case '--d': o.d = ints(next(), a); break;
      case '--r': o.r = ints(next(), a); break;
      case '--n': o.n = ints(next(), a); break;
      case '--dtype': o.dtypes = list(next(), a) as BenchDType[]; break;
      case '--op': o.ops = list(next(), a) as BenchOp[]; break;
      case '--threads': o.threads = ints(next(), a)[0]; break;
      case '--min-time': o.minTime = Number(next()); break;
      case '--no-reference': o.reference = false; break;
      case '--openblas': o.openblasLibrary = next(); break;
      case '--coretype': o.openblasCoretype = next(); break;
      case '--out': o.outDir = next(); break;
      case '--no-save': o.outDir = null; break;
      case '--json': json = true; break;
      default:
        console.error(`lorakit bench: unknown option '${a}'\n${HELP}`);
        return 2;
    }
  }
  const tty = process.stderr.isTTY;
  o.progress = (line) => {
    if (tty) process.stderr.write(`\r\x1b[K${line}`);
  };
  const res = await bench(o);
  if (tty) process.stderr.write('\r\x1b[K');
  console.log(json ? JSON.stringify(res, null, 2) : formatTable(res));
  return 0;
}
