import { FloatDType, Tensor } from '../../lib';
import { randomArray } from './reference';

/** A tensor of dtype with seeded values, and the values it actually holds (after rounding to dtype). */
export function seededTensor(shape: number[], seed: number, dtype: FloatDType = 'f32', scale = 1): { t: Tensor; v: Float32Array } {
  const n = shape.reduce((a, b) => a * b, 1);
  const t = Tensor.from(randomArray(n, seed, scale), shape, { dtype });
  return { t, v: t.toFloat32Array() };
}
