/**
 * A fixed-seed slice of the fuzz (`npm run fuzz` runs 100,000 cases): a few thousand random valid
 * and invalid calls of the public API, the native boundary and the file readers, in a child
 * process so a native crash fails this test instead of killing jest.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';

const SLICE = 'tensor:400,forward:400,merge:400,layer:300,async:200,native:500,header:150,config:300,surface:500';
const SEED = Number(process.env.LORAKIT_FUZZ_SEED ?? 20261128);

test(`fuzz slice (${SLICE}, seed ${SEED}): no crash, valid calls match float64, invalid calls throw typed errors`, () => {
  const root = path.join(__dirname, '..');
  const r = spawnSync(process.execPath, ['-r', './scripts/ts-hook.js', 'test/fuzz/child.ts', SLICE, String(SEED)], {
    cwd: root,
    encoding: 'utf8',
    timeout: 120000,
  });
  expect(r.signal).toBeNull(); // a native crash shows up here as SIGSEGV/SIGABRT
  const results = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { target: string; runs: number; failed: boolean; error: string | null; valid: number; invalid: number });
  for (const res of results) expect({ target: res.target, failed: res.failed, error: res.error }).toEqual({ target: res.target, failed: false, error: null });
  expect(r.status).toBe(0);
  const total = results.reduce((a, res) => a + res.runs, 0);
  expect(total).toBe(3150);
  expect(results.reduce((a, res) => a + res.valid, 0)).toBeGreaterThan(400);
});
