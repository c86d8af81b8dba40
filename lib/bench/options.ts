/**
 * bench()'s options: one vocabulary for the API and the CLI. The CLI's flags are the API's keys
 * in kebab case (`--ops` ↔ `ops`, `--min-time` ↔ `minTime`); `--op`/`--dtype` are kept as
 * aliases. The API writes a results file only when given `outDir`; the CLI passes
 * bench/results unless told `--no-save`.
 */
import { LoraRangeError, LoraTypeError } from '../errors';
import { checkBool, checkInt, checkOptions, checkString } from '../validate';

// exact: exact merge/unmerge vs peft's merge/unmerge; swap: switchMerged vs exact unmerge + merge.
export type BenchOp = 'gemm' | 'forward' | 'fwdbwd' | 'merge' | 'exact' | 'swap';
export type BenchDType = 'f32' | 'bf16';

export const BENCH_OPS: readonly BenchOp[] = ['gemm', 'forward', 'fwdbwd', 'merge', 'exact', 'swap'];
/** What runs when `ops` is not given ('swap' also times the exact row). */
export const DEFAULT_BENCH_OPS: readonly BenchOp[] = ['gemm', 'forward', 'fwdbwd', 'merge', 'swap'];
export const BENCH_DTYPES: readonly BenchDType[] = ['f32', 'bf16'];

export interface BenchOptions {
  /** Hidden sizes (CLI --d; default 1024, 4096). */
  d?: number[];
  /** Ranks (CLI --r; default 8, 16, 64; quick 16). */
  r?: number[];
  /** Tokens per call (CLI --n; default 1, 16, 128, 512; quick 1, 128). */
  n?: number[];
  /** CLI --dtypes (alias --dtype); default both. */
  dtypes?: BenchDType[];
  /** CLI --ops (alias --op); default all. */
  ops?: BenchOp[];
  /** A small grid (d 1024/4096, r 16, n 1/128) with short timings (CLI --quick). */
  quick?: boolean;
  /** Seconds of timing per row (CLI --min-time; default 1, quick 0.3). */
  minTime?: number;
  /** Pool threads for the run (CLI --threads; default: the current setting). */
  threads?: number;
  /** Time OpenBLAS as the reference (default true when it is installed; CLI --no-reference). */
  reference?: boolean;
  /** OpenBLAS library path (CLI --openblas), and its kernel family (CLI --coretype; default 'fastest': each
   *  family the CPU runs is timed on the run's largest GEMM and the fastest is the reference). */
  openblasLibrary?: string;
  openblasCoretype?: string;
  /** Directory for the JSON results (CLI --out). Default: no file (the CLI's default is bench/results). */
  outDir?: string | null;
  /** Recorded in the results as the command that made them. */
  command?: string;
  /** Called with a line of progress per row. */
  progress?: (line: string) => void;
  seed?: number;
  /** Buffer size for the bandwidth measurement (default 512 MiB: far beyond any cache). */
  peakBufferBytes?: number;
}

const KEYS: ReadonlyArray<keyof BenchOptions> = [
  'd', 'r', 'n', 'dtypes', 'ops', 'quick', 'minTime', 'threads', 'reference', 'openblasLibrary',
  'openblasCoretype', 'outDir', 'command', 'progress', 'seed', 'peakBufferBytes',
];

/** Keys a CLI user is likely to write, and the API's name for them. */
const HINTS: Record<string, string> = {
  op: "the API's key is 'ops' (a list)",
  dtype: "the API's key is 'dtypes' (a list)",
  out: "the API's key is 'outDir'",
  noSave: 'leave outDir out: the API writes no file unless given outDir',
  'no-save': 'leave outDir out: the API writes no file unless given outDir',
  'min-time': "the API's key is 'minTime'",
  noReference: "write 'reference: false'",
  openblas: "the API's key is 'openblasLibrary'",
  coretype: "the API's key is 'openblasCoretype'",
};

function checkList<T extends number | string>(v: unknown, name: string, ok: (x: T) => boolean): T[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.length === 0 || !v.every(ok))
    throw new LoraRangeError(`${name}: expected a non-empty list of valid values, got ${JSON.stringify(v)}`);
  return v as T[];
}

/** Checks every option's key, type and range; returns them typed. */
export function checkBenchOptions(opts: unknown): BenchOptions {
  const o = checkOptions(opts, KEYS, 'opts', HINTS) as BenchOptions;
  const isPosInt = (x: number) => Number.isInteger(x) && x >= 1 && x <= 65536;
  checkList<number>(o.d, 'd', isPosInt);
  checkList<number>(o.r, 'r', isPosInt);
  checkList<number>(o.n, 'n', isPosInt);
  checkList<string>(o.dtypes, 'dtypes', (x) => (BENCH_DTYPES as readonly string[]).includes(x));
  checkList<string>(o.ops, 'ops', (x) => (BENCH_OPS as readonly string[]).includes(x));
  if (o.quick !== undefined) checkBool(o.quick, 'quick');
  if (o.reference !== undefined) checkBool(o.reference, 'reference');
  if (o.threads !== undefined) checkInt(o.threads, 'threads', 1, 4096);
  if (o.seed !== undefined) checkInt(o.seed, 'seed', 0);
  if (o.peakBufferBytes !== undefined) checkInt(o.peakBufferBytes, 'peakBufferBytes', 1 << 20);
  if (o.minTime !== undefined && (typeof o.minTime !== 'number' || !(o.minTime > 0 && o.minTime <= 60)))
    throw new LoraRangeError(`minTime: expected (0, 60] seconds, got ${String(o.minTime)}`);
  for (const k of ['openblasLibrary', 'openblasCoretype', 'command'] as const) if (o[k] !== undefined) checkString(o[k], k);
  if (o.outDir !== undefined && o.outDir !== null) checkString(o.outDir, 'outDir'); // null: no file, as leaving it out
  if (o.progress !== undefined && typeof o.progress !== 'function') throw new LoraTypeError(`progress: expected a function, got ${typeof o.progress}`);
  return o;
}
