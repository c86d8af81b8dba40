/**
 * mergeCheckpoint on a DoRA conv1d (fan_in_fan_out) adapter: the native DoRA merge gives what
 * LoraModel.mergeAdapter gives and a float64 reference of peft's merge (W' = m / ‖W + s·B·A‖ ⊙ (W + s·B·A)).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LoraModel, SafetensorsReader, Tensor, mergeCheckpoint, writeSafetensors } from '../lib';
import { relErr } from './helpers/golden';
import { randomArray } from './helpers/reference';

test('DoRA conv1d: the streaming merge matches the in-memory merge and a float64 reference', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-dora-merge-'));
  try {
    const inF = 96;
    const outF = 64;
    const r = 8;
    const name = 'h.0.attn.c_attn';
    const w = randomArray(inF * outF, 11, 0.1);
    const W = Tensor.from(w.slice(), [inF, outF]);
    writeSafetensors(path.join(dir, 'base.safetensors'), { [`${name}.weight`]: W });
    const model = new LoraModel([{ name, kind: 'conv1d', weight: W }], { r, loraAlpha: 12, targetModules: ['c_attn'], useDora: true, initLoraWeights: false, seed: 5 });
    const layer = model.layers.get(name)!;
    const m = layer.loraMagnitude.get('default')!;
    const mv = m.toFloat32Array().map((v, i) => v * (1 + 0.2 * Math.sin(i))); // a magnitude that is not the norm
    m.copyFrom(mv);
    model.savePretrained(path.join(dir, 'adapter'));
    const out = path.join(dir, 'merged.safetensors');
    await mergeCheckpoint({ base: path.join(dir, 'base.safetensors'), adapter: path.join(dir, 'adapter'), out });
    const got = new SafetensorsReader(out).float32(`${name}.weight`);

    const A = layer.loraA.get('default')!.toFloat32Array();
    const B = layer.loraB.get('default')!.toFloat32Array();
    const s = layer.scaling.get('default')!;
    const ref = new Float64Array(w.length); // W [in, out]: output feature o is column o
    for (let i = 0; i < inF; i++)
      for (let o = 0; o < outF; o++) {
        let d = 0;
        for (let k = 0; k < r; k++) d += B[o * r + k] * A[k * inF + i];
        ref[i * outF + o] = w[i * outF + o] + s * d;
      }
    const norm = new Float64Array(outF);
    ref.forEach((v, j) => (norm[j % outF] += v * v));
    ref.forEach((v, j) => (ref[j] = (v * mv[j % outF]) / Math.sqrt(norm[j % outF])));
    expect(relErr(got, ref)).toBeLessThan(1e-6);

    model.mergeAdapter();
    expect(relErr(got, W.toFloat32Array())).toBeLessThan(1e-6);
    model.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
