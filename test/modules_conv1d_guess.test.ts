/**
 * modulesFromStateDict's Conv1D-by-name guess: GPT-2's c_attn / c_proj / c_fc weights are stored
 * [in, out] (transformers' Conv1D, peft's fan_in_fan_out). A square c_proj fits both layouts, so its
 * name is the only thing that says conv1d; the merge then adds s·(B·A)ᵀ, as peft does for Conv1D.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LoraModel, Tensor, guessKind, modulesFromStateDict, writeSafetensors } from '../lib';
import { randomArray } from './helpers/reference';

const D = 16;
const R = 2;

function gpt2Block(): Map<string, Tensor> {
  return new Map([
    ['transformer.h.0.attn.c_attn.weight', Tensor.from(randomArray(D * 3 * D, 1, 0.2), [D, 3 * D])],
    ['transformer.h.0.attn.c_proj.weight', Tensor.from(randomArray(D * D, 2, 0.2), [D, D])], // square
    ['transformer.h.0.attn.c_proj.bias', Tensor.from(randomArray(D, 3), [D])],
    ['transformer.h.0.attn.q_proj.weight', Tensor.from(randomArray(D * D, 4, 0.2), [D, D])], // square, a plain Linear
  ]);
}

test('guessKind: GPT-2 Conv1D names are conv1d even when square; other square weights stay linear', () => {
  expect(guessKind('transformer.h.0.attn.c_proj', [D, D])).toBe('conv1d');
  expect(guessKind('transformer.h.0.mlp.c_fc', [D, 4 * D])).toBe('conv1d');
  expect(guessKind('transformer.h.0.attn.q_proj', [D, D])).toBe('linear');
  const kinds = Object.fromEntries(modulesFromStateDict(gpt2Block()).map((m) => [m.name, m.kind]));
  expect(kinds).toEqual({ 'transformer.h.0.attn.c_attn': 'conv1d', 'transformer.h.0.attn.c_proj': 'conv1d', 'transformer.h.0.attn.q_proj': 'linear' });
  expect(modulesFromStateDict(gpt2Block(), { kinds: { c_proj: 'linear' } }).find((m) => m.name.endsWith('c_proj'))!.kind).toBe('linear');
});

test("a peft adapter on a square c_proj merges as Conv1D (W + s·(B·A)ᵀ), and as Linear only when told", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-conv1d-'));
  try {
    const A = randomArray(R * D, 5, 0.5);
    const B = randomArray(D * R, 6, 0.5);
    const p = 'base_model.model.transformer.h.0.attn.c_proj';
    writeSafetensors(path.join(dir, 'adapter_model.safetensors'), {
      [`${p}.lora_A.weight`]: { dtype: 'F32', shape: [R, D], bytes: new Uint8Array(A.buffer) },
      [`${p}.lora_B.weight`]: { dtype: 'F32', shape: [D, R], bytes: new Uint8Array(B.buffer) },
    });
    fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: R, lora_alpha: 4, fan_in_fan_out: true, target_modules: ['c_proj'] }));
    const s = 4 / R;
    const BA = new Float64Array(D * D); // [out, in]
    for (let o = 0; o < D; o++) for (let i = 0; i < D; i++) for (let j = 0; j < R; j++) BA[o * D + i] += B[o * R + j] * A[j * D + i];
    const merged = (kinds?: Record<string, 'linear'>) => {
      const sd = gpt2Block();
      const W0 = sd.get('transformer.h.0.attn.c_proj.weight')!.toFloat32Array().slice();
      const model = LoraModel.fromPretrained(modulesFromStateDict(sd, kinds ? { kinds } : {}), dir, { warn: () => {} });
      const kind = model.modules.get('transformer.h.0.attn.c_proj')!.kind;
      const W = model.mergeAndUnload().get('transformer.h.0.attn.c_proj.weight')!.toFloat32Array();
      return { kind, delta: Array.from(W, (v, k) => v - W0[k]) };
    };
    const conv = merged();
    expect(conv.kind).toBe('conv1d');
    // W is [in, out]: element (i, o) gets s·(B·A)[o, i].
    conv.delta.forEach((d, k) => expect(d).toBeCloseTo(s * BA[(k % D) * D + Math.floor(k / D)], 5));
    const lin = merged({ c_proj: 'linear' });
    expect(lin.kind).toBe('linear');
    lin.delta.forEach((d, k) => expect(d).toBeCloseTo(s * BA[k], 5));
    expect(conv.delta).not.toEqual(lin.delta);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
