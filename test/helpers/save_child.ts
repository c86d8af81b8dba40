/**
 * Child process for test/reliability_atomic_save.test.ts (run through scripts/ts-hook.js):
 *   stream <dir>: saves an adapter, then starts overwriting its weights file with the streaming
 *                 writer, prints MIDWAY halfway through and waits to be killed.
 *   loop <dir>:   saves the adapter over and over with new values, printing each version's SHA-1,
 *                 until it is killed.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { LoraModel, SafetensorsStreamWriter, Tensor } from '../../lib';

const [mode, dir] = process.argv.slice(2);
const WEIGHTS = 'adapter_model.safetensors';

function sha1(file: string): string {
  return crypto.createHash('sha1').update(fs.readFileSync(file)).digest('hex');
}

const size = mode === 'loop' ? 1024 : 256;
const names = Array.from({ length: 8 }, (_, i) => `layers.${i}.proj`);
const modules = names.map((name, i) => ({ name, kind: 'linear' as const, weight: Tensor.from(new Float32Array(size * size).fill(i / 8), [size, size]) }));
const model = new LoraModel(modules, { targetModules: ['proj'], r: 64, initLoraWeights: false, seed: 1 });
model.savePretrained(dir);
console.log(`SAVED 0 ${sha1(path.join(dir, WEIGHTS))}`);

if (mode === 'stream') {
  const specs = [{ name: 'big', dtype: 'F32', shape: [4, 1 << 20] }];
  const w = new SafetensorsStreamWriter(path.join(dir, WEIGHTS), specs);
  const chunk = new Uint8Array(1 << 20).fill(7);
  for (let i = 0; i < 8; i++) w.write('big', chunk); // half of the 16 MiB tensor
  console.log('MIDWAY');
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60000); // killed here
} else {
  for (let v = 1; ; v++) {
    for (const name of names) {
      const A = model.layers.get(name)!.loraA.get('default')!;
      A.copyFrom(new Float32Array(A.numel).fill(v + names.indexOf(name) / 100));
    }
    console.log(`SAVING ${v}`);
    model.savePretrained(dir);
    console.log(`SAVED ${v} ${sha1(path.join(dir, WEIGHTS))}`);
  }
}
