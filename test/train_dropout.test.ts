/**
 * LoRA dropout in training mode: with W = 0, A = B = I and scaling 1 the layer outputs drop(x)
 * itself, so the mask and its scaling can be read off the output and the gradients.
 */
import { LoraLinear, Tensor } from '../lib';
import { randomArray } from './helpers/reference';

const d = 64;
const n = 64;

function identityLayer(p: number, seed = 123): LoraLinear {
  const layer = new LoraLinear({ weight: Tensor.zeros([d, d]) });
  layer.addAdapter('default', { r: d, loraAlpha: d, loraDropout: p, initLoraWeights: false, seed });
  const eye = new Float32Array(d * d);
  for (let i = 0; i < d; i++) eye[i * d + i] = 1;
  layer.loraA.get('default')!.copyFrom(eye);
  layer.loraB.get('default')!.copyFrom(eye);
  return layer;
}

// Inputs away from 0 so a dropped element (0) is never confused with a kept one.
const xData = randomArray(n * d, 77).map((v) => (v >= 0 ? v + 0.5 : v - 0.5));
const x = Tensor.from(xData, [n, d]);

function keptMask(y: Float32Array): boolean[] {
  return Array.from(y, (v) => v !== 0);
}

describe('LoRA dropout', () => {
  test('inverted scaling: each output is 0 or x/(1-p), keep fraction ≈ 1-p', () => {
    for (const p of [0.1, 0.5]) {
      const layer = identityLayer(p);
      const y = layer.forward(x).toFloat32Array();
      let kept = 0;
      for (let i = 0; i < y.length; i++) {
        if (y[i] === 0) continue;
        kept++;
        expect(Math.abs(y[i] - xData[i] / (1 - p))).toBeLessThanOrEqual(1e-6 * Math.abs(xData[i] / (1 - p)));
      }
      const frac = kept / y.length;
      const sigma = Math.sqrt((p * (1 - p)) / y.length);
      expect(Math.abs(frac - (1 - p))).toBeLessThan(5 * sigma);
    }
  });

  test('reproducible from a seed: manualSeed replays the masks; forwards and seeds differ', () => {
    const layer = identityLayer(0.3);
    layer.manualSeed(42);
    const a1 = keptMask(layer.forward(x).toFloat32Array());
    const a2 = keptMask(layer.forward(x).toFloat32Array());
    layer.manualSeed(42);
    expect(keptMask(layer.forward(x).toFloat32Array())).toEqual(a1);
    expect(keptMask(layer.forward(x).toFloat32Array())).toEqual(a2);
    expect(a2).not.toEqual(a1); // a fresh mask per forward
    layer.manualSeed(43);
    expect(keptMask(layer.forward(x).toFloat32Array())).not.toEqual(a1);
    // Same adapter seed on another layer: same masks.
    const other = identityLayer(0.3, 123);
    const fresh = identityLayer(0.3, 123);
    expect(keptMask(other.forward(x).toFloat32Array())).toEqual(keptMask(fresh.forward(x).toFloat32Array()));
  });

  test("backward uses the forward's mask (dx and dA), with the same 1/(1-p) scaling", () => {
    const p = 0.4;
    const layer = identityLayer(p);
    layer.forward(x); // a forward before, so the mask under test is not stream 0
    const y = layer.forward(x).toFloat32Array();
    const dyData = randomArray(n * d, 5);
    const { dx, grads } = layer.backward(Tensor.from(dyData, [n, d]));
    const dxv = dx.toFloat32Array();
    for (let i = 0; i < y.length; i++) {
      const expected = y[i] !== 0 ? dyData[i] / (1 - p) : 0;
      expect(Math.abs(dxv[i] - expected)).toBeLessThanOrEqual(1e-6 * Math.abs(expected) + 1e-7);
    }
    // dA = gᵀ·drop(x) with g = s·dy·B = dy, and drop(x) = y here.
    const dA = grads.get('default')!.loraA.toFloat32Array();
    for (const [i, j] of [[0, 0], [3, 17], [63, 5], [20, 63]]) {
      let ref = 0;
      for (let r = 0; r < n; r++) ref += dyData[r * d + i] * y[r * d + j];
      expect(Math.abs(dA[i * d + j] - ref)).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(ref)));
    }
  });

  test('eval mode: no dropout; p = 0: identity', () => {
    const layer = identityLayer(0.5);
    layer.eval();
    expect(Array.from(layer.forward(x).toFloat32Array())).toEqual(Array.from(xData));
    const noDrop = identityLayer(0);
    expect(Array.from(noDrop.forward(x).toFloat32Array())).toEqual(Array.from(xData));
  });
});
