/**
 * A fixed-seed slice of the GGUF reader fuzz (test/fuzz/gguf_targets.ts; `npm run fuzz` runs more):
 * valid files read back exactly, corrupted ones (bad magic or version, huge counts and string
 * lengths, unknown type ids, offsets past the end or overlapping, misalignment, truncation) give
 * typed errors, in a child process so a crash fails this test instead of killing jest.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';

const RUNS = 2000;
const SEED = Number(process.env.LORAKIT_FUZZ_SEED ?? 20261206);

test(`gguf fuzz slice (${RUNS} cases, seed ${SEED}): no crash, typed errors, bounded memory`, () => {
  const r = spawnSync(process.execPath, ['-r', './scripts/ts-hook.js', 'test/fuzz/child.ts', `gguf:${RUNS}`, String(SEED)], {
    cwd: path.join(__dirname, '..'),
    encoding: 'utf8',
    timeout: 120000,
  });
  expect(r.signal).toBeNull();
  const res = JSON.parse(r.stdout.trim().split('\n').filter(Boolean).pop()!) as { failed: boolean; error: string | null; runs: number; valid: number; invalid: number; rssMB: number };
  expect({ failed: res.failed, error: res.error }).toEqual({ failed: false, error: null });
  expect(res.runs).toBe(RUNS);
  expect(res.valid).toBeGreaterThan(RUNS / 5);
  expect(res.invalid).toBeGreaterThan(RUNS / 2);
  expect(res.rssMB).toBeLessThan(400); // files here are < 4 KB; a count trusted before checking would allocate GBs
});
