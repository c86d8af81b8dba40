/**
 * The peft cases of test/fixtures/peft_cases (scripts/golden/make_peft_cases.py, peft 0.21): file
 * access, and the tiny model y = classifier(norm(fc2(fc1(x)))) the cases use, run with lorakit's
 * LoRA layers for fc1 and fc2 and plain float64 host code for the LayerNorm and the classifier
 * (lorakit runs no non-LoRA modules: the caller's model does, as here).
 */
import * as fs from 'fs';
import * as path from 'path';
import { LoraModel, SafetensorsFile, Tensor, modulesFromStateDict } from '../../lib';
import { LoraLinear } from '../../lib/layers/linear';

export const PEFT_CASES_DIR = process.env.LORAKIT_PEFT_CASES ?? path.resolve(__dirname, '../fixtures/peft_cases');

/** Fails (never skips) when the cases are missing. */
export function requirePeftCases(): void {
  if (!fs.existsSync(path.join(PEFT_CASES_DIR, 'bias_all', 'expected.safetensors')))
    throw new Error(`peft cases missing under ${PEFT_CASES_DIR}: run scripts/golden/make_peft_cases.py <dir> with peft 0.21 and put its output there (or set LORAKIT_PEFT_CASES)`);
}

export interface ModelCase {
  dir: string;
  adapter: string;
  expected: SafetensorsFile;
  meta: { trainable: string[]; layer_norm_eps: number; n: number; classes: number; hidden: number };
  /** A fresh copy of the base model's tensors (loading an adapter may write into its biases). */
  base(): Map<string, Tensor>;
}

export function modelCase(name: string): ModelCase {
  requirePeftCases();
  const dir = path.join(PEFT_CASES_DIR, name);
  const expected = SafetensorsFile.read(path.join(dir, 'expected.safetensors'));
  const baseFile = SafetensorsFile.read(path.join(dir, 'base_model.safetensors'));
  return {
    dir,
    adapter: path.join(dir, 'adapter'),
    expected,
    meta: JSON.parse(expected.metadata.case),
    base: () => new Map(baseFile.names.map((n) => [n, baseFile.tensor(n)])),
  };
}

export function loadModel(c: ModelCase, base = c.base()): LoraModel {
  return LoraModel.fromPretrained(modulesFromStateDict(base), c.adapter, { isTrainable: true, warn: () => {} });
}

/** The tensors the model's forward uses for a non-LoRA module: its modulesToSave copy, else its own. */
function moduleTensors(model: LoraModel, base: Map<string, Tensor>, name: string): { w: Float32Array; b: Float32Array } {
  const saved = model.modulesToSave.get(name);
  const w = saved ? saved.weight : base.get(`${name}.weight`)!;
  const b = saved ? saved.bias! : base.get(`${name}.bias`)!;
  return { w: w.toFloat32Array(), b: b.toFloat32Array() };
}

export interface TinyRun {
  y: Float64Array;
  /** Gradients of the host-side modules, by lorakit parameter name. */
  hostGrads: Map<string, Float64Array>;
}

/**
 * Forward in training mode and backward of sum(y ⊙ dy): the LoRA layers accumulate into their
 * Parameters; the host-side modules' gradients are returned (and added into the model's Parameters
 * of the same name, as a user's model would).
 */
export function runTiny(model: LoraModel, base: Map<string, Tensor>, c: ModelCase): TinyRun {
  const x = c.expected.tensor('x');
  const dy = c.expected.float32('dy');
  const fc1 = model.layers.get('fc1') as LoraLinear;
  const fc2 = model.layers.get('fc2') as LoraLinear;
  fc1.train();
  fc2.train();
  const h1 = fc1.forward(x);
  const h2 = fc2.forward(h1);
  const n = c.meta.n;
  const H = c.meta.hidden;
  const C = c.meta.classes;
  const norm = moduleTensors(model, base, 'norm');
  const cls = moduleTensors(model, base, 'classifier');
  const h = h2.toFloat32Array();
  const eps = c.meta.layer_norm_eps;
  const xhat = new Float64Array(n * H);
  const rstd = new Float64Array(n);
  const nOut = new Float64Array(n * H);
  for (let i = 0; i < n; i++) {
    let mean = 0;
    for (let j = 0; j < H; j++) mean += h[i * H + j];
    mean /= H;
    let v = 0;
    for (let j = 0; j < H; j++) v += (h[i * H + j] - mean) ** 2;
    rstd[i] = 1 / Math.sqrt(v / H + eps);
    for (let j = 0; j < H; j++) {
      xhat[i * H + j] = (h[i * H + j] - mean) * rstd[i];
      nOut[i * H + j] = xhat[i * H + j] * norm.w[j] + norm.b[j];
    }
  }
  const y = new Float64Array(n * C);
  for (let i = 0; i < n; i++)
    for (let k = 0; k < C; k++) {
      let s = cls.b[k];
      for (let j = 0; j < H; j++) s += nOut[i * H + j] * cls.w[k * H + j];
      y[i * C + k] = s;
    }
  // Backward of sum(y ⊙ dy).
  const dWc = new Float64Array(C * H);
  const dbc = new Float64Array(C);
  const dn = new Float64Array(n * H);
  for (let i = 0; i < n; i++)
    for (let k = 0; k < C; k++) {
      const g = dy[i * C + k];
      dbc[k] += g;
      for (let j = 0; j < H; j++) {
        dWc[k * H + j] += g * nOut[i * H + j];
        dn[i * H + j] += g * cls.w[k * H + j];
      }
    }
  const dGamma = new Float64Array(H);
  const dBeta = new Float64Array(H);
  const dh2 = new Float64Array(n * H);
  for (let i = 0; i < n; i++) {
    let m1 = 0;
    let m2 = 0;
    for (let j = 0; j < H; j++) {
      const g = dn[i * H + j];
      dGamma[j] += g * xhat[i * H + j];
      dBeta[j] += g;
      m1 += g * norm.w[j];
      m2 += g * norm.w[j] * xhat[i * H + j];
    }
    m1 /= H;
    m2 /= H;
    for (let j = 0; j < H; j++) dh2[i * H + j] = rstd[i] * (dn[i * H + j] * norm.w[j] - m1 - xhat[i * H + j] * m2);
  }
  const dh2T = Tensor.from(dh2, h2.shape);
  const r2 = fc2.backward(dh2T);
  const r1 = fc1.backward(r2.dx);
  for (const r of [r1, r2]) {
    r.dx.dispose();
    r.bias?.dispose();
    for (const g of r.grads.values()) [g.loraA, g.loraB, g.magnitude, g.loraBBias].forEach((t) => t?.dispose());
  }
  [x, h1, h2, dh2T].forEach((t) => t.dispose());
  const saved = (m: string) => (model.modulesToSave.has(m) ? `${m}.modules_to_save.${model.modulesToSave.get(m)!.activeAdapter}.` : `${m}.`);
  const hostGrads = new Map<string, Float64Array>([
    [`${saved('classifier')}weight`, dWc],
    [`${saved('classifier')}bias`, dbc],
    [`${saved('norm')}weight`, dGamma],
    [`${saved('norm')}bias`, dBeta],
  ]);
  const params = new Map(model.namedParameters());
  for (const [name, g] of hostGrads) {
    const p = params.get(name);
    if (!p) continue;
    const t = Tensor.from(g, p.shape);
    p.accumulateGrad(t);
    t.dispose();
  }
  return { y, hostGrads };
}

/** The peft name of a lorakit parameter name. */
export const peftName = (name: string): string => `base_model.model.${name}`;
