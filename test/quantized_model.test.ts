/**
 * LoraModel over quantized bases: QuantizedTensor module weights, fromPretrained's quantize option
 * (targets and untouched linear modules, skip, model-owned copies), mergeAndUnload({ dtype }) back
 * to float, and the typed errors.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LoraLinear, LoraModel, ModuleSpec, QuantizedTensor, Tensor } from '../lib';
import { runDemo } from '../lib/demo/run';
import { relErr } from './helpers/golden';
import { randomArray } from './helpers/reference';

function modules(): ModuleSpec[] {
  return [
    { name: 'q_proj', kind: 'linear', weight: Tensor.from(randomArray(32 * 64, 1, 0.3), [32, 64]), bias: Tensor.from(randomArray(32, 2, 0.1), [32]) },
    { name: 'up', kind: 'linear', weight: Tensor.from(randomArray(64 * 64, 3, 0.3), [64, 64]) },
    { name: 'lm_head', kind: 'linear', weight: Tensor.from(randomArray(16 * 64, 4, 0.3), [16, 64]) },
    { name: 'norm', kind: 'other', weight: Tensor.from(randomArray(64, 5), [64]) },
  ];
}

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-qmodel-'));
  const m = new LoraModel(modules(), { targetModules: ['q_proj'], r: 4, loraAlpha: 8, initLoraWeights: false, seed: 3 });
  m.savePretrained(dir);
  m.dispose();
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('LoraModel over quantized bases', () => {
  test('fromPretrained({ quantize }) quantizes every linear module but skipped ones; outputs match the dequantised float model', () => {
    const mods = modules();
    const model = LoraModel.fromPretrained(mods, dir, { quantize: { format: 'nf4', skip: ['lm_head'] } });
    const sd = model.stateDict();
    expect(QuantizedTensor.isQuantizedTensor(sd.get('q_proj.weight'))).toBe(true);
    expect(QuantizedTensor.isQuantizedTensor(sd.get('up.weight'))).toBe(true); // untouched linear module
    expect(sd.get('lm_head.weight')).toBe(mods[2].weight);
    expect(sd.get('norm.weight')).toBe(mods[3].weight);
    const layer = model.layers.get('q_proj') as LoraLinear<QuantizedTensor>;
    expect(layer.quantizedWeight?.format).toBe('nf4');
    // the same adapter on the dequantised float weight
    const deq = (sd.get('q_proj.weight') as QuantizedTensor).dequantize();
    const float = LoraModel.fromPretrained([{ ...mods[0], weight: deq }], dir);
    const x = Tensor.from(randomArray(3 * 64, 9), [3, 64]);
    layer.eval();
    const fl = float.layers.get('q_proj')!.eval();
    expect(relErr(layer.forward(x).toFloat32Array(), fl.forward(x).toFloat32Array())).toBeLessThan(1e-5);
    // merge is exact over the quantized bytes
    const b0 = (sd.get('q_proj.weight') as QuantizedTensor).bytes();
    model.mergeAdapter();
    expect(model.mergeSideInfoBytes).toBeGreaterThan(0);
    model.unmergeAdapter();
    expect(Buffer.from((sd.get('q_proj.weight') as QuantizedTensor).bytes()).equals(Buffer.from(b0))).toBe(true);
    // mergeAndUnload gives floats: quantized modules dequantised (+ ΔW for targets), in the dtype asked for
    const merged = model.mergeAndUnload({ dtype: 'bf16' });
    float.mergeAdapter();
    const want = fl.weight as Tensor;
    expect(merged.get('q_proj.weight')!.dtype).toBe('bf16');
    expect(relErr(merged.get('q_proj.weight')!.toFloat32Array(), want.toFloat32Array())).toBeLessThan(5e-3);
    expect(merged.get('up.weight')!.shape).toEqual([64, 64]);
    expect(merged.get('norm.weight')!.dtype).toBe('bf16');
    // the model made (and freed) the quantized copies; the caller's float tensors are untouched
    expect((sd.get('up.weight') as QuantizedTensor).disposed).toBe(true);
    expect((mods[1].weight as Tensor).disposed).toBe(false);
    float.dispose();
  });

  test('a model over QuantizedTensor weights given by the caller; q4_k with a 64-wide input is refused with the module named', async () => {
    const mods = modules();
    const q = Tensor.quantize(mods[1].weight as Tensor, 'int8');
    const model = new LoraModel([{ name: 'up', kind: 'linear', weight: q }], { targetModules: ['up'], r: 2, initLoraWeights: false });
    const layer = model.layers.get('up')!;
    const y = await layer.forwardAsync(Tensor.from(randomArray(2 * 64, 3), [2, 64]));
    expect(y.shape).toEqual([2, 64]);
    const w = await model.mergeAndUnloadAsync();
    expect(w.get('up.weight')!.dtype).toBe('f32');
    expect(q.disposed).toBe(false); // the caller's
    expect(() => LoraModel.fromPretrained(modules(), dir, { quantize: { format: 'q4_k' } })).toThrow(
      expect.objectContaining({ name: 'ShapeError', message: expect.stringMatching(/^opts.quantize: module 'q_proj': w: the input dimension 64 .* block size 256; pad .*opts.quantize.skip/) }),
    );
  });

  test('bad input: quantize options, a QuantizedTensor on a non-linear module', () => {
    expect(() => LoraModel.fromPretrained(modules(), dir, { quantize: { format: 'nf3' as never } })).toThrow(
      expect.objectContaining({ name: 'LoraTypeError', message: expect.stringMatching(/^opts.quantize.format: unknown quantized format 'nf3' \(valid: int8/) }),
    );
    expect(() => LoraModel.fromPretrained(modules(), dir, { quantize: { format: 'nf4', skip: 'lm_head' as never } })).toThrow(
      expect.objectContaining({ name: 'LoraTypeError', message: 'opts.quantize.skip: expected an array of module names' }),
    );
    const q = Tensor.quantize(Tensor.zeros([8, 64]), 'nf4');
    expect(() => new LoraModel([{ name: 'emb', kind: 'embedding', weight: q }], { targetModules: ['emb'], r: 2 })).toThrow(
      expect.objectContaining({ name: 'LoraTypeError', message: expect.stringMatching(/^modules\[0\].weight: a QuantizedTensor is a linear module's weight/) }),
    );
  });
});

describe('demo --quantize nf4 (shortened)', () => {
  test('QLoRA on an nf4 base still learns; merge checks out and unmerge gives the bytes back', async () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-qdemo-'));
    const small = { steps: 150, batch: 32, inFeatures: 64, hidden: 128, outFeatures: 32, teacherRank: 2, r: 4, lr: 1e-2, timingBatch: 64, timingReps: 3 };
    const res = await runDemo({ ...small, quantize: 'nf4', outDir: out, seed: 3, progress: false, png: false, log: () => {} });
    expect(res.lossDrop).toBeGreaterThanOrEqual(10);
    expect(res.mergeRelErr).toBeLessThanOrEqual(1e-5);
    expect(res.quantizedBytesRestored).toBe(true);
    expect(res.baseBytesPerWeight).toBeCloseTo(0.5625, 6);
    expect(res.reloadRelErr).toBeLessThanOrEqual(1e-6);
    fs.rmSync(out, { recursive: true, force: true });
  });
});
