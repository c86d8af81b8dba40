/**
 * Fuzz runs in their own process (so a native crash is seen by the parent, not fatal to it):
 *   node -r ./scripts/ts-hook.js test/fuzz/child.ts <target>:<runs>[,<target>:<runs>...] <seed>
 * Prints one JSON line per target: { target, runs, seed, failed, counterexample, error, valid,
 * invalid, ms, rssMB }; exits 1 when a property failed.
 */
import fc from 'fast-check';
import { asyncTarget, forwardTarget, layerTarget, mergeTarget, tensorTarget } from './api_targets';
import { tally } from './fuzz_common';
import { cleanupFileTargets, configTarget, headerTarget } from './file_targets';
import { cleanupGgufTargets, ggufTarget } from './gguf_targets';
import { nativeTarget } from './native_targets';
import { surfaceTarget } from './surface_target';

const TARGETS: Record<string, fc.IProperty<never> | fc.IAsyncProperty<never>> = {
  tensor: tensorTarget as never,
  forward: forwardTarget as never,
  merge: mergeTarget as never,
  layer: layerTarget as never,
  async: asyncTarget as never,
  native: nativeTarget as never,
  header: headerTarget as never,
  config: configTarget as never,
  surface: surfaceTarget as never,
  gguf: ggufTarget as never,
};

async function runTarget(name: string, numRuns: number, seed: number): Promise<boolean> {
  const prop = TARGETS[name];
  if (!prop) throw new Error(`unknown target '${name}' (known: ${Object.keys(TARGETS).join(', ')})`);
  tally.valid = 0;
  tally.invalid = 0;
  const t0 = Date.now();
  let peakRss = process.memoryUsage().rss;
  const timer = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 50);
  const details = await fc.check(prop as fc.IAsyncProperty<never>, { numRuns, seed });
  clearInterval(timer);
  peakRss = Math.max(peakRss, process.memoryUsage().rss);
  const out = {
    target: name,
    runs: details.numRuns,
    seed,
    failed: details.failed,
    counterexample: details.failed ? fc.stringify(details.counterexample) : null,
    error: details.failed ? String((details.errorInstance as Error)?.message ?? details.errorInstance).slice(0, 2000) : null,
    valid: tally.valid,
    invalid: tally.invalid,
    ms: Date.now() - t0,
    rssMB: Math.round(peakRss / 2 ** 20),
  };
  process.stdout.write(JSON.stringify(out) + '\n');
  return !details.failed;
}

async function main(): Promise<void> {
  const [spec, seedArg] = process.argv.slice(2);
  const seed = Number(seedArg ?? Date.now() % 2 ** 31);
  let ok = true;
  try {
    for (const part of (spec ?? '').split(',').filter(Boolean)) {
      const [name, runs] = part.split(':');
      ok = (await runTarget(name, Number(runs ?? 1000), seed)) && ok;
    }
  } finally {
    cleanupFileTargets();
    cleanupGgufTargets();
  }
  if (!ok) process.exitCode = 1;
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ target: process.argv[2], failed: true, error: String(e?.stack ?? e) }) + '\n');
  process.exitCode = 1;
});
