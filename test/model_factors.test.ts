/** model/factors.ts: the one place for the scaling, the factor shapes of a kind and the kind of a pair of factors. */
import { LoraModel, Tensor } from '../lib';
import { factorShapes, factorsFit, kindFromFactors, loraScaling } from '../lib/model/factors';

test('loraScaling is alpha / r, or alpha / √r with rsLoRA (peft update_layer)', () => {
  expect(loraScaling(16, 8, false)).toBe(2);
  expect(loraScaling(16, 4, true)).toBe(8);
  expect(loraScaling(8, 3, true)).toBe(8 / Math.sqrt(3));
});

test('the layers and the model use the same scaling', () => {
  const W = Tensor.from(new Float32Array(12 * 10), [12, 10]);
  const m = new LoraModel([{ name: 'q', kind: 'linear', weight: W }], { targetModules: ['q'], r: 4, loraAlpha: 6, useRslora: true });
  const layer = m.layers.get('q')!;
  expect(layer.scaling.get('default')).toBe(loraScaling(6, 4, true));
  layer.setScale('default', 0.5);
  expect(layer.scaling.get('default')).toBe(0.5 * loraScaling(6, 4, true));
  m.dispose();
});

test('factorShapes: peft\'s lora_A / lora_B shapes per kind', () => {
  expect(factorShapes('linear', [12, 10], 4)).toEqual({ A: [4, 10], B: [12, 4] });
  expect(factorShapes('conv1d', [10, 12], 4)).toEqual({ A: [4, 10], B: [12, 4] });
  expect(factorShapes('embedding', [50, 8], 4)).toEqual({ A: [4, 50], B: [8, 4] });
  expect(factorShapes('conv2d', [6, 2, 3, 3], 4, 2)).toEqual({ A: [4, 4, 3, 3], B: [6, 2, 1, 1] });
  expect(factorsFit('linear', [12, 10], [4, 10], [12, 4])).toBe(true);
  expect(factorsFit('linear', [12, 10], [4, 12], [10, 4])).toBe(false);
  expect(factorsFit('linear', [12, 10, 1, 1], [4, 10], [12, 4])).toBe(false); // wrong weight rank
  expect(factorsFit('conv2d', [6, 3, 3, 3], [2, 3, 3, 3], [6, 2, 1, 1])).toBe(true);
});

test('kindFromFactors: the layout the factors fit; a square weight keeps the preferred one', () => {
  const f = (A: number[], B: number[], embedding = false) => ({ A, B, embedding });
  expect(kindFromFactors([12, 10], f([4, 10], [12, 4]), false)).toBe('linear');
  expect(kindFromFactors([12, 10], f([4, 10], [12, 4]), true)).toBe('linear'); // only [out, in] fits
  expect(kindFromFactors([10, 12], f([4, 10], [12, 4]), false)).toBe('conv1d');
  expect(kindFromFactors([8, 8], f([4, 8], [8, 4]), false)).toBe('linear');
  expect(kindFromFactors([8, 8], f([4, 8], [8, 4]), true)).toBe('conv1d');
  expect(kindFromFactors([50, 8], f([4, 50], [8, 4], true), false)).toBe('embedding');
  expect(kindFromFactors([6, 3, 3, 3], f([2, 3, 3, 3], [6, 2, 1, 1]), false)).toBe('conv2d');
  expect(kindFromFactors([12, 10], f([4, 7], [12, 4]), false)).toBeNull();
});
