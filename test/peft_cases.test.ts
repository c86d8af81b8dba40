/**
 * lorakit against peft 0.21 (test/fixtures/peft_cases, made by scripts/golden/make_peft_cases.py):
 * bias='all', bias='lora_only', lora_bias and modules_to_save on a tiny model with non-zero
 * biases and saved modules. Load peft's adapter, forward, gradients of every trainable tensor, the
 * files savePretrained writes, mergeAndUnload and `lorakit merge` against merge_and_unload.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { AdamW, SafetensorsFile, mergeCheckpoint } from '../lib';
import { expectClose, relErr } from './helpers/golden';
import { loadModel, modelCase, peftName, requirePeftCases, runTiny } from './helpers/peft_cases';

const TOL = 1e-5;
const CASES = ['bias_all', 'bias_lora_only', 'lora_bias', 'modules_to_save'] as const;

let tmp: string;
beforeAll(() => {
  requirePeftCases();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-peft-cases-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe.each(CASES)('peft case %s', (name) => {
  test('loads peft adapter: the same trainable tensors, with peft values', () => {
    const c = modelCase(name);
    const model = loadModel(c);
    const ours = model.namedParameters();
    expect(ours.map(([n]) => peftName(n)).sort()).toEqual([...c.meta.trainable].sort());
    for (const [n, p] of ours) expectClose(p.data.toFloat32Array(), c.expected.float32(`value.${peftName(n)}`), 1e-7, n);
    const counts = model.getNbTrainableParameters();
    expect(counts.trainable).toBe(ours.reduce((s, [, p]) => s + p.numel, 0));
    model.dispose();
  });

  test('forward and every gradient match peft within 1e-5', () => {
    const c = modelCase(name);
    const base = c.base();
    const model = loadModel(c, base);
    const params = model.namedParameters(); // handed out before backward, as an optimizer holds them
    const { y } = runTiny(model, base, c);
    expectClose(y, c.expected.float32('y'), TOL, 'y');
    expect(relErr(c.expected.float32('y'), c.expected.float32('y_base'))).toBeGreaterThan(1e-2); // the case is not trivial
    expect(model.namedParameters().map(([n]) => n)).toEqual(params.map(([n]) => n));
    for (const [n, p] of params) {
      expect(p.grad).not.toBeNull();
      expectClose(p.grad!.toFloat32Array(), c.expected.float32(`grad.${peftName(n)}`), TOL, `grad ${n}`);
    }
    // The optimizer steps every one of them, biases and saved copies included.
    const before = model.namedParameters().map(([, p]) => p.data.toFloat32Array().slice());
    const opt = new AdamW(model.parameters(), { lr: 1e-2 });
    opt.step();
    const unchanged = model.namedParameters().filter(([, p], i) => relErr(p.data.toFloat32Array(), before[i]) === 0);
    expect(unchanged.map(([n]) => n)).toEqual([]);
    opt.dispose();
    model.dispose();
  });

  test('savePretrained writes what peft wrote (names, values, config)', () => {
    const c = modelCase(name);
    const model = loadModel(c);
    const out = path.join(tmp, `save-${name}`);
    model.savePretrained(out);
    const ours = SafetensorsFile.read(path.join(out, 'adapter_model.safetensors'));
    const theirs = SafetensorsFile.read(path.join(c.adapter, 'adapter_model.safetensors'));
    expect(ours.names.sort()).toEqual(theirs.names.sort());
    for (const k of theirs.names) expect(Array.from(ours.float32(k))).toEqual(Array.from(theirs.float32(k)));
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
    const peftCfg = JSON.parse(fs.readFileSync(path.join(c.adapter, 'adapter_config.json'), 'utf8'));
    for (const k of ['bias', 'lora_bias', 'modules_to_save', 'r', 'lora_alpha']) expect([k, cfg[k]]).toEqual([k, peftCfg[k]]);
    model.dispose();
  });

  test('mergeAndUnload gives merge_and_unload weights within 1e-5', () => {
    const c = modelCase(name);
    const model = loadModel(c);
    const merged = model.mergeAndUnload();
    const want = SafetensorsFile.read(path.join(c.dir, 'merged_model.safetensors'));
    expect([...merged.keys()].sort()).toEqual(want.names.sort());
    for (const k of want.names) expectClose(merged.get(k)!.toFloat32Array(), want.float32(k), TOL, k);
  });

  test('lorakit merge (streaming) gives merge_and_unload weights within 1e-5', async () => {
    const c = modelCase(name);
    const out = path.join(tmp, `merged-${name}.safetensors`);
    await mergeCheckpoint({ base: path.join(c.dir, 'base_model.safetensors'), adapter: c.adapter, out });
    const got = SafetensorsFile.read(out);
    const want = SafetensorsFile.read(path.join(c.dir, 'merged_model.safetensors'));
    expect(got.names.sort()).toEqual(want.names.sort());
    for (const k of want.names) expectClose(got.float32(k), want.float32(k), TOL, k);
  });
});
