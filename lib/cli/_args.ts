/** A small `--name value` / `--flag` parser for the CLI commands (no dependency needed for this). */
import { LoraTypeError } from '../errors';

export interface ParsedArgs {
  values: Map<string, string>;
  flags: Set<string>;
  positional: string[];
}

/** Parses argv; `valued` lists options that take a value, `flags` the boolean ones. Unknown options throw. */
export function parseArgs(argv: string[], valued: readonly string[], flags: readonly string[] = []): ParsedArgs {
  const out: ParsedArgs = { values: new Map(), flags: new Set(), positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) {
      out.positional.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
    if (flags.includes(name)) {
      out.flags.add(name);
      continue;
    }
    if (!valued.includes(name)) throw new LoraTypeError(`unknown option --${name} (known: ${[...valued, ...flags].map((n) => `--${n}`).join(', ')})`);
    const value = eq > 0 ? a.slice(eq + 1) : argv[++i];
    if (value === undefined || (eq < 0 && value.startsWith('--'))) throw new LoraTypeError(`--${name} needs a value`);
    if (out.values.has(name)) throw new LoraTypeError(`--${name} given twice`);
    out.values.set(name, value);
  }
  return out;
}

/**
 * `lorakit merge`'s arguments (both bases: safetensors and GGUF): argv parsed with the `valued`
 * options and --quiet, --base, --adapter and --out required, no positional ones, and --scale
 * (default 1) a finite number; null after printing what is wrong (with `usage` for a wrong option).
 */
export function mergeArgs(argv: string[], valued: readonly string[], usage: string): { args: ParsedArgs; scale: number } | null {
  let args: ParsedArgs;
  try {
    args = parseArgs(argv, valued, ['quiet']);
  } catch (e) {
    console.error(`lorakit merge: ${(e as Error).message}\n${usage}`);
    return null;
  }
  const missing = ['base', 'adapter', 'out'].filter((k) => !args.values.has(k));
  if (missing.length || args.positional.length) {
    console.error(`lorakit merge: ${missing.length ? `missing ${missing.map((m) => `--${m}`).join(', ')}` : `unexpected argument '${args.positional[0]}'`}\n${usage}`);
    return null;
  }
  const text = args.values.get('scale');
  const scale = text === undefined ? 1 : Number(text);
  if (!Number.isFinite(scale) || text?.trim() === '') {
    console.error(`lorakit merge: --scale must be a finite number, got '${text}'`);
    return null;
  }
  return { args, scale };
}

/**
 * Runs `lorakit merge`'s streamed merge with a progress bar (none with --quiet), then prints
 * summary(result, seconds) unless quiet: exit code 0, or 1 after printing the error.
 */
export async function runMerge<R>(
  quiet: boolean,
  merge: (onProgress: ((done: number, total: number, what: string) => void) | undefined) => Promise<R>,
  summary: (result: R, seconds: string) => string,
): Promise<number> {
  const bar = progressBar('merging');
  const t0 = Date.now();
  try {
    const res = await merge(quiet ? undefined : (d, t, n) => bar.update(d, t, n));
    bar.end();
    if (!quiet) console.log(summary(res, ((Date.now() - t0) / 1000).toFixed(1)));
    return 0;
  } catch (e) {
    bar.end();
    console.error(`lorakit merge: ${(e as Error).message}`);
    return 1;
  }
}

/** A one-line progress bar on stderr, drawn only on a TTY. */
export function progressBar(label: string): { update(done: number, total: number, what: string): void; end(): void } {
  const tty = process.stderr.isTTY === true;
  let last = 0;
  return {
    update(done, total, what) {
      if (!tty) return;
      const now = Date.now();
      if (done !== total && now - last < 100) return;
      last = now;
      const width = 30;
      const fill = Math.round((width * done) / Math.max(total, 1));
      const name = what.length > 40 ? `…${what.slice(-39)}` : what;
      process.stderr.write(`\r${label} [${'#'.repeat(fill)}${' '.repeat(width - fill)}] ${done}/${total} ${name}`.padEnd(process.stderr.columns || 100).slice(0, (process.stderr.columns || 100) - 1));
    },
    end() {
      if (tty) process.stderr.write('\n');
    },
  };
}
