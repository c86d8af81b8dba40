/** The conformance scripts run on the GPU host fail loudly when they would check nothing real. */
import { spawnSync } from 'child_process';
import * as path from 'path';

const ROOT = path.resolve(__dirname, '..');

test('check-cpu-kernels.js fails when LORAKIT_CPU_PATH is misspelt or unavailable', () => {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'scripts/check-cpu-kernels.js')], { env: { ...process.env, LORAKIT_CPU_PATH: 'avx3' }, encoding: 'utf8' });
  expect(r.status).toBe(3);
  expect(r.stdout).toMatch(/FAIL: LORAKIT_CPU_PATH=avx3 is not available here or is misspelt/);
});

test('check-cpu-golden.sh fails for a path this CPU does not have', () => {
  const r = spawnSync('bash', [path.join(ROOT, 'scripts/check-cpu-golden.sh'), 'nope'], { encoding: 'utf8' });
  expect(r.status).toBe(1);
  expect(r.stdout).toMatch(/nope: FAILED: not available here/);
});
