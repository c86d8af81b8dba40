/**
 * The addon in worker_threads: 4 workers load it at once and run forward passes simultaneously
 * (sync and async). Each result must match a float64 reference, with no cross-talk through the
 * process-wide thread pool or any other shared state.
 */
import * as path from 'path';
import { Worker } from 'worker_threads';
import { loraLinearRef, randomArray } from './helpers/reference';
import { relErr } from './helpers/golden';

const ROOT = path.join(__dirname, '..');

// Runs in each worker (plain JS; the hook loads lib/*.ts like the tests do).
const WORKER_SRC = `
const { parentPort, workerData } = require('worker_threads');
require(workerData.root + '/scripts/ts-hook.js');
const lk = require(workerData.root + '/lib');
const { randomArray } = require(workerData.root + '/test/helpers/reference.ts');
const { seed, n, inF, outF, ranks, iters, go } = workerData;
const W = lk.Tensor.from(randomArray(outF * inF, seed, 0.2), [outF, inF]);
const bias = lk.Tensor.from(randomArray(outF, seed + 1), [outF]);
const layer = new lk.LoraLinear({ weight: W, bias });
ranks.forEach((r, k) => layer.addAdapter('a' + k, { r, loraAlpha: 2 * r + k, initLoraWeights: false, seed: seed + 10 + k }));
layer.setAdapter(ranks.map((_, k) => 'a' + k));
layer.eval();
const x = lk.Tensor.from(randomArray(n * inF, seed + 2), [n, inF]);
const factors = ranks.map((r, k) => ({ A: layer.loraA.get('a' + k).toFloat32Array(), B: layer.loraB.get('a' + k).toFloat32Array(), r, s: layer.scaling.get('a' + k) }));
parentPort.postMessage({ ready: true });
Atomics.wait(new Int32Array(go), 0, 0); // start together
(async () => {
  let first = null;
  let mismatches = 0;
  for (let it = 0; it < iters; it++) {
    const y = it % 2 ? await layer.forwardAsync(x) : layer.forward(x);
    const v = y.toFloat32Array();
    y.dispose();
    if (!first) first = v;
    else if (v.some((e, i) => e !== first[i])) mismatches++;
  }
  parentPort.postMessage({ y: first, mismatches, factors, threads: lk.backendInfo().threads });
})().catch((e) => parentPort.postMessage({ error: String(e && e.stack || e) }));
`;

interface WorkerResult {
  y: Float32Array;
  mismatches: number;
  factors: Array<{ A: Float32Array; B: Float32Array; r: number; s: number }>;
  threads: number;
  error?: string;
}

test('4 worker_threads run forward at the same time with correct results', async () => {
  const go = new SharedArrayBuffer(4);
  const specs = [0, 1, 2, 3].map((i) => ({ seed: 100 + 17 * i, n: 48 + 8 * i, inF: 96 + 16 * i, outF: 80 - 8 * i, ranks: [4 + i, 2], iters: 12 }));
  const workers = specs.map((s) => new Worker(WORKER_SRC, { eval: true, workerData: { ...s, root: ROOT, go } }));
  const results = workers.map(
    (w) =>
      new Promise<WorkerResult>((resolve, reject) => {
        w.on('message', (m: WorkerResult & { ready?: boolean }) => {
          if (m.ready) return;
          if (m.error) reject(new Error(m.error));
          else resolve(m);
        });
        w.on('error', reject);
        w.on('exit', (code) => code !== 0 && reject(new Error(`worker exited with ${code}`)));
      }),
  );
  const ready = workers.map((w) => new Promise<void>((resolve) => w.on('message', (m: { ready?: boolean }) => m.ready && resolve())));
  await Promise.all(ready);
  Atomics.store(new Int32Array(go), 0, 1);
  Atomics.notify(new Int32Array(go), 0);
  const out = await Promise.all(results);
  await Promise.all(workers.map((w) => w.terminate()));
  out.forEach((res, i) => {
    const s = specs[i];
    const x = randomArray(s.n * s.inF, s.seed + 2);
    const W = randomArray(s.outF * s.inF, s.seed, 0.2);
    const b = randomArray(s.outF, s.seed + 1);
    const ref = loraLinearRef(x, s.n, s.inF, s.outF, W, b, res.factors);
    expect(res.y.length).toBe(s.n * s.outF);
    expect(relErr(res.y, ref)).toBeLessThan(1e-5);
    expect(res.mismatches).toBe(0); // every sync and async repetition gave the same bits
  });
});
