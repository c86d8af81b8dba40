/** lora_bias, trainable biases and modulesToSave: API rules and error paths (the peft values are in peft_cases.test.ts). */
import { LoraEmbedding, LoraLinear, LoraModel, Tensor } from '../lib';
import { call } from '../lib/native';
import { randomArray } from './helpers/reference';

const W = () => Tensor.from(randomArray(6 * 5, 1), [6, 5]);
const b = () => Tensor.from(randomArray(6, 2), [6]);

describe('lora_bias on LoraLinear', () => {
  test('forward adds s·b_B; merge adds it to the bias and unmerge restores it', () => {
    const layer = new LoraLinear({ weight: W(), bias: b() });
    layer.addAdapter('a', { r: 2, loraAlpha: 4, loraBias: true, initLoraWeights: false, seed: 3 });
    const bB = layer.loraBBias.get('a')!.toFloat32Array();
    expect(bB.some((v) => v !== 0)).toBe(true);
    const bias0 = layer.bias!.toFloat32Array().slice();
    const x = Tensor.from(randomArray(3 * 5, 4), [3, 5]);
    layer.eval();
    const y = layer.forward(x).toFloat32Array();
    layer.merge();
    const merged = layer.bias!.toFloat32Array();
    merged.forEach((v, i) => expect(v).toBeCloseTo(bias0[i] + 2 * bB[i], 6));
    const yMerged = layer.forward(x).toFloat32Array();
    yMerged.forEach((v, i) => expect(v).toBeCloseTo(y[i], 5));
    layer.unmerge();
    layer.bias!.toFloat32Array().forEach((v, i) => expect(v).toBeCloseTo(bias0[i], 6));
    layer.dispose();
  });

  test('backward gives d b_B = s·Σ_rows dy; parameters() includes it', () => {
    const layer = new LoraLinear({ weight: W(), bias: b() });
    layer.addAdapter('a', { r: 2, loraAlpha: 4, loraBias: true });
    const names = layer.parameters().map((p) => p.name);
    expect(names).toEqual(['lora_A.a.weight', 'lora_B.a.weight', 'lora_B.a.bias']);
    const x = Tensor.from(randomArray(3 * 5, 4), [3, 5]);
    layer.forward(x);
    const dyArr = randomArray(3 * 6, 5);
    const r = layer.backward(Tensor.from(dyArr, [3, 6]));
    const g = r.grads.get('a')!.loraBBias!.toFloat32Array();
    for (let j = 0; j < 6; j++) expect(g[j]).toBeCloseTo(2 * (dyArr[j] + dyArr[6 + j] + dyArr[12 + j]), 5);
    expect(layer.loraBBiasParameter('a')!.grad!.toFloat32Array()).toEqual(g);
    layer.dispose();
  });

  test('refused with DoRA, on other layer kinds, in mixed batches and when merging without a base bias', () => {
    const layer = new LoraLinear({ weight: W() });
    expect(() => layer.addAdapter('d', { loraBias: true, useDora: true })).toThrow(/useDora/);
    expect(() => layer.addAdapter('g', { loraBias: true, initLoraWeights: 'gaussian' })).toThrow(/initLoraWeights true or false/);
    const emb = new LoraEmbedding({ weight: Tensor.zeros([7, 3]) });
    expect(() => emb.addAdapter('e', { loraBias: true })).toThrow(/LoraLinear only/);
    layer.addAdapter('a', { r: 2, loraBias: true });
    layer.eval();
    const x = Tensor.from(randomArray(2 * 5, 4), [2, 5]);
    expect(layer.forward(x).shape).toEqual([2, 6]); // the adapter's own bias works without a base bias
    expect(() => layer.forward(x, { adapterNames: ['a', '__base__'] })).toThrow(/mixed-adapter batches/);
    expect(() => layer.merge()).toThrow(/no base bias/);
    expect(layer.merged).toBe(false);
    layer.dispose();
  });
});

describe('trainable base bias', () => {
  test('backward gives Σ_rows dy; only layers with a bias can train it', () => {
    const layer = new LoraLinear({ weight: W(), bias: b() });
    layer.addAdapter('a', { r: 2 });
    layer.trainableBias = true;
    const p = layer.biasParameter()!;
    expect(p.name).toBe('base_layer.bias');
    expect(layer.parameters()).toContain(p);
    layer.forward(Tensor.from(randomArray(4 * 5, 4), [2, 2, 5]));
    const dy = randomArray(4 * 6, 6);
    const r = layer.backward(Tensor.from(dy, [2, 2, 6]));
    const g = r.bias!.toFloat32Array();
    for (let j = 0; j < 6; j++) expect(g[j]).toBeCloseTo(dy[j] + dy[6 + j] + dy[12 + j] + dy[18 + j], 5);
    layer.dispose();
    const noBias = new LoraLinear({ weight: W() });
    expect(() => (noBias.trainableBias = true)).toThrow(/no bias to train/);
  });

  test('columnSum checks its output shape', () => {
    const x = Tensor.zeros([3, 4]);
    const out = Tensor.zeros([5]);
    expect(() => call((bd) => bd.columnSum(x.handle, 1, out.handle))).toThrow(/x's last dimension/);
  });
});

describe('LoraModel bias modes and modulesToSave', () => {
  const modules = () => [
    { name: 'fc', kind: 'linear' as const, weight: W(), bias: b() },
    { name: 'head', kind: 'linear' as const, weight: Tensor.from(randomArray(12, 7), [2, 6]), bias: Tensor.from([0.5, -0.5], [2]) },
  ];

  test('bias and modulesToSave decide the trainable tensors; only one adapter may have a copy active', () => {
    const model = new LoraModel(modules(), { targetModules: ['fc'], r: 2, bias: 'all', modulesToSave: ['head'] });
    expect(model.namedParameters().map(([n]) => n)).toEqual([
      'fc.lora_A.default.weight', 'fc.lora_B.default.weight', 'fc.base_layer.bias',
      'head.modules_to_save.default.weight', 'head.modules_to_save.default.bias',
    ]);
    const w = model.modulesToSave.get('head')!;
    expect(w.weight).not.toBe(w.originalModule.weight);
    model.addAdapter('other', { targetModules: ['fc'], r: 2, modulesToSave: ['head'] });
    expect(() => model.setAdapter(['default', 'other'])).toThrow(/only one of them can be active/);
    model.setAdapter('other');
    expect(w.activeAdapter).toBe('other');
    expect(model.namedParameters().map(([n]) => n)).not.toContain('fc.base_layer.bias'); // the bias belongs to 'default'
    expect(() => model.addAdapter('x', { targetModules: ['fc'], modulesToSave: ['nope'] })).toThrow(/matched no module/);
    expect(() => model.addWeightedAdapter(['default', 'other'], [1, 1], 'w')).toThrow(/modulesToSave copies/);
    model.deleteAdapter('other');
    expect(w.modulesToSave.size).toBe(1);
    model.dispose();
  });

  test('the head in modulesToSave never takes LoRA; mergeAndUnload keeps the active copy', () => {
    const mods = modules();
    const model = new LoraModel(mods, { targetModules: ['fc', 'head'], r: 2, modulesToSave: ['head'] });
    expect(model.targetedModules()).toEqual(['fc']);
    const copy = model.modulesToSave.get('head')!.modulesToSave.get('default')!;
    copy.weight.copyFrom(new Float32Array(12).fill(3));
    const sd = model.mergeAndUnload();
    expect(sd.get('head.weight')).toBe(mods[1].weight);
    expect(Array.from(mods[1].weight.toFloat32Array())).toEqual(new Array(12).fill(3));
  });
});

test("addWeightedAdapter makes its factors on the sources' device and dtype (cuda: test-gpu/golden_linear.test.js)", () => {
  const layer = new LoraLinear({ weight: W() });
  layer.addAdapter('p', { r: 2, initLoraWeights: false, dtype: 'bf16', seed: 1 });
  layer.addAdapter('q', { r: 2, initLoraWeights: false, dtype: 'bf16', seed: 2 });
  layer.addWeightedAdapter(['p', 'q'], [0.5, 0.5], 'w', { combinationType: 'cat' });
  for (const t of [layer.loraA.get('w')!, layer.loraB.get('w')!]) expect([t.device, t.dtype]).toEqual([layer.weight.device, 'bf16']);
  layer.dispose();
});
