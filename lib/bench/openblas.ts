/**
 * The benchmark's reference: OpenBLAS sgemm, timed by a small C program (native/bench/openblas_ref.c)
 * built with the system C compiler when an OpenBLAS shared library is present. It runs in its own
 * process so that OPENBLAS_CORETYPE and OPENBLAS_NUM_THREADS apply to it alone.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

export interface OpenblasRef {
  library: string;
  coretype: string | null;
  /** When the core type was chosen by timing: each candidate's best time (ms) on the probe shape. */
  coretypeTimes?: { shape: [number, number, number]; ms: Record<string, number> };
  /** The kernel OpenBLAS reports it uses (openblas_get_corename). */
  core: string;
  binary: string;
  threads: number;
}

export interface RefTiming {
  seconds: number;
  maxRelErr: number;
}

const CANDIDATES = [
  'libopenblas.so.0',
  '/usr/lib/x86_64-linux-gnu/libopenblas.so.0',
  '/usr/lib/aarch64-linux-gnu/libopenblas.so.0',
  'libopenblas.so',
  'libopenblas.dylib',
];

function sourcePath(): string {
  return path.join(__dirname, '..', '..', 'native', 'bench', 'openblas_ref.c');
}

/** Builds the comparator (cached by source hash) and probes the library; a string says why not. */
export function prepareOpenblas(opts: { library?: string; coretype: string | null; threads: number }): OpenblasRef | string {
  const src = sourcePath();
  if (!fs.existsSync(src)) return `comparator source missing (${src})`;
  const code = fs.readFileSync(src);
  const hash = crypto.createHash('sha256').update(code).digest('hex').slice(0, 12);
  const dir = path.join(os.tmpdir(), `lorakit-bench-${hash}`);
  const binary = path.join(dir, 'openblas_ref');
  if (!fs.existsSync(binary)) {
    fs.mkdirSync(dir, { recursive: true });
    const tmp = `${binary}.${process.pid}.tmp`;
    try {
      execFileSync(process.env.CC || 'cc', ['-O2', '-o', tmp, src, '-ldl', '-lm'], { stdio: 'pipe' });
      fs.renameSync(tmp, binary);
    } catch (e) {
      return `could not compile the comparator with ${process.env.CC || 'cc'}: ${(e as Error).message.split('\n')[0]}`;
    }
  }
  const libs = opts.library ? [opts.library] : CANDIDATES;
  for (const lib of libs) {
    const r = run(binary, lib, opts.coretype, opts.threads, 1, []);
    if (typeof r === 'string') continue;
    return { library: lib, coretype: opts.coretype, core: r.core, binary, threads: opts.threads };
  }
  return `no OpenBLAS library found (tried ${libs.join(', ')}; on Debian/Ubuntu: apt-get install libopenblas-dev)`;
}

function run(
  binary: string,
  lib: string,
  coretype: string | null,
  threads: number,
  reps: number,
  shapes: string[],
): { core: string; rows: Array<{ m: number; n: number; k: number; seconds: number; maxRelErr: number }> } | string {
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: String(threads) };
  if (coretype) env.OPENBLAS_CORETYPE = coretype;
  else delete env.OPENBLAS_CORETYPE;
  const r = spawnSync(binary, [lib, String(reps), ...shapes], { env, encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) return (r.stderr || `exit ${r.status}`).trim();
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  return { core: lines[0].core, rows: lines.slice(1) };
}

/** Times C[m, n] = A[m, k]·B[n, k]ᵀ; the best of `reps` runs. */
export function timeSgemm(ref: OpenblasRef, m: number, n: number, k: number, reps: number): RefTiming | string {
  const r = run(ref.binary, ref.library, ref.coretype, ref.threads, reps, [`${m},${n},${k}`]);
  if (typeof r === 'string') return r;
  return { seconds: r.rows[0].seconds, maxRelErr: r.rows[0].maxRelErr };
}

/**
 * Times each candidate kernel family on one shape (alternating, best of `rounds`) and returns the
 * reference with the fastest; candidates the library refuses (or the CPU cannot run) are skipped.
 */
export function fastestCoretype(
  ref: OpenblasRef,
  candidates: string[],
  shape: [number, number, number],
  reps: number,
  rounds = 2,
): OpenblasRef {
  const ms: Record<string, number> = {};
  const cores: Record<string, string> = {};  // the kernel each family reports using
  for (let round = 0; round < rounds; round++) {
    for (const c of candidates) {
      if (round > 0 && !(c in ms)) continue;
      const r = run(ref.binary, ref.library, c, ref.threads, reps, [shape.join(',')]);
      if (typeof r === 'string') continue;
      ms[c] = Math.min(ms[c] ?? Infinity, r.rows[0].seconds * 1e3);
      cores[c] = r.core;
    }
  }
  const ranked = Object.keys(ms).sort((a, b) => ms[a] - ms[b]);
  if (ranked.length === 0) return ref;
  const best = ranked[0];
  return { ...ref, coretype: best, core: cores[best], coretypeTimes: { shape, ms } };
}
