/** `lorakit bench`: times the CPU kernels against the machine's ceilings and OpenBLAS; writes JSON. */
import * as path from 'path';
import { BenchDType, BenchOp, BenchOptions, bench, formatTable } from '../bench';

export const summary = 'benchmark the CPU kernels (table + JSON in bench/results/); --help for options';

const HELP = `usage: lorakit bench [options]
Each flag is an option of the API's bench({...}) in kebab case (--ops ↔ ops, --min-time ↔ minTime).
  --quick               small grid (d 1024,4096; r 16; n 1,128), short timings
  --d LIST              hidden sizes (default 1024,4096)
  --r LIST              ranks (default 8,16,64; quick 16)
  --n LIST              tokens per call (default 1,16,128,512; quick 1,128)
  --dtypes LIST         f32,bf16 (default both; --dtype is the same flag)
  --ops LIST            gemm,forward,fwdbwd,merge (default all; --op is the same flag)
  --threads N           pool threads (default: all cores)
  --min-time S          seconds of timing per row (default 1, quick 0.3)
  --no-reference        skip the OpenBLAS reference (API: reference: false)
  --openblas PATH       OpenBLAS shared library to compare with (API: openblasLibrary)
  --coretype NAME       OPENBLAS_CORETYPE for the reference (default: fastest, each kernel family the CPU runs
                        timed first; API: openblasCoretype)
  --out DIR             results directory (default bench/results; API: outDir, whose default is no file)
  --no-save             do not write a results file
  --json                print the JSON result instead of the table

examples:
  lorakit bench --quick
  lorakit bench --d 4096 --n 128,512 --ops gemm,forward --dtypes f32 --no-save`;

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

/** The bench() options a command line asks for, or the exit code when it only asked for help or was wrong. */
export function optionsFromArgs(argv: string[]): { opts: BenchOptions; json: boolean } | number {
  const o: BenchOptions = { command: `lorakit bench ${argv.join(' ')}`.trim(), outDir: path.join('bench', 'results') };
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
      case '--dtypes':
      case '--dtype': o.dtypes = list(next(), a) as BenchDType[]; break;
      case '--ops':
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
  return { opts: o, json };
}

export async function run(argv: string[]): Promise<number> {
  const parsed = optionsFromArgs(argv);
  if (typeof parsed === 'number') return parsed;
  const { opts: o, json } = parsed;
  const tty = process.stderr.isTTY;
  o.progress = (line) => {
    if (tty) process.stderr.write(`\r\x1b[K${line}`);
  };
  const res = await bench(o);
  if (tty) process.stderr.write('\r\x1b[K');
  console.log(json ? JSON.stringify(res, null, 2) : formatTable(res));
  return 0;
}
