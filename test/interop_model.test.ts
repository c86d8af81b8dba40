/** LoraModel against peft: the opt_tiny adapter written by peft, merged weights, parameter counts. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Checkpoint, LoraModel, Tensor, modulesFromStateDict } from '../lib';
import { opt350mModules } from './fixtures/opt350m';
import { GOLDEN_DIR, expectClose, loadCase } from './helpers/golden';
import { writeCaseAsPeft } from './helpers/peft_adapter';

const TINY = path.join(GOLDEN_DIR, 'opt_tiny');

function loadTiny(): { modules: ReturnType<typeof modulesFromStateDict>; tensors: Map<string, Tensor> } {
  const ck = Checkpoint.open(path.join(TINY, 'base_model.safetensors'));
  const tensors = new Map<string, Tensor>();
  for (const n of ck.names) tensors.set(n, ck.tensor(n));
  const modules = modulesFromStateDict(tensors, { aliases: ck.aliases });
  ck.close();
  return { modules, tensors };
}

describe('opt-350m shapes', () => {
  test('printTrainableParameters prints peft\'s line exactly, from shapes alone', () => {
    const expected = JSON.parse(fs.readFileSync(path.join(GOLDEN_DIR, 'opt350m_count.json'), 'utf8')) as { trainable: number; total: number };
    const before = process.memoryUsage().rss;
    const model = new LoraModel(opt350mModules(), { targetModules: ['q_proj', 'v_proj'], r: 8 });
    const lines: string[] = [];
    model.printTrainableParameters((l) => lines.push(l));
    expect(lines).toEqual(['trainable params: 786,432 || all params: 331,982,848 || trainable%: 0.2369']);
    expect(model.getNbTrainableParameters()).toEqual({ trainable: expected.trainable, total: expected.total });
    expect(model.layers.size).toBe(0); // nothing allocated
    expect(process.memoryUsage().rss - before).toBeLessThan(200 * 1024 * 1024);
  });

  test('targeting rules: regex full match, suffix list, exclude, layersToTransform, patterns, all-linear', () => {
    const mods = opt350mModules();
    const count = (cfg: ConstructorParameters<typeof LoraModel>[1]) => new LoraModel(mods, cfg).targetedModules();
    expect(count({ targetModules: '.*layers\\.(0|1)\\.self_attn\\.(q|v)_proj' })).toHaveLength(4);
    expect(() => count({ targetModules: 'q_proj' })).toThrow(/matched no module/); // a string must match the whole name
    expect(count({ targetModules: ['model.decoder.layers.0.self_attn.q_proj'] })).toHaveLength(1);
    expect(count({ targetModules: ['q_proj'], layersToTransform: [0, 3] })).toEqual(['model.decoder.layers.0.self_attn.q_proj', 'model.decoder.layers.3.self_attn.q_proj']);
    expect(count({ targetModules: ['q_proj', 'v_proj'], excludeModules: '.*layers\\.[1-9]\\d*\\..*' })).toHaveLength(2);
    // 'all-linear': every linear but the output head (project_in/out, 4 attention, fc1, fc2)
    expect(count({ targetModules: 'all-linear' })).toHaveLength(2 + 24 * 6);
    const m = new LoraModel(mods, { targetModules: ['q_proj', 'v_proj'], r: 8, rankPattern: { 'layers\\.0\\.self_attn\\.q_proj': 2 }, alphaPattern: { v_proj: 3 } });
    expect(m.slot('model.decoder.layers.0.self_attn.q_proj', 'default')).toEqual({ r: 2, loraAlpha: 8 });
    expect(m.slot('model.decoder.layers.1.self_attn.q_proj', 'default')).toEqual({ r: 8, loraAlpha: 8 });
    expect(m.slot('model.decoder.layers.5.self_attn.v_proj', 'default')).toEqual({ r: 8, loraAlpha: 3 });
    expect(m.getNbTrainableParameters().trainable).toBe(786432 - 6 * 2048);
  });

  test('bias modes and layersPattern count as peft does', () => {
    const biases = 24 * (4 * 1024 + 4096 + 1024 + 2 * 1024); // every '.bias' parameter, layer norms included
    const trainable = (cfg: object) => new LoraModel(opt350mModules(), { targetModules: ['q_proj', 'v_proj'], ...cfg }).getNbTrainableParameters();
    expect(trainable({ bias: 'all' })).toEqual({ trainable: 786432 + biases, total: 331982848 });
    expect(trainable({ bias: 'lora_only' }).trainable).toBe(786432 + 48 * 1024);
    expect(trainable({ layersToTransform: [2], layersPattern: 'layers' }).trainable).toBe(2 * 8 * 2048);
    expect(() => trainable({ layersToTransform: 2, layersPattern: 'blocks' })).toThrow(/matched no module/);
  });

  test('no match and bad targets give clear errors', () => {
    expect(() => new LoraModel(42 as never, { targetModules: ['q_proj'] })).toThrow(/expected an array \(or Map\)/);
    expect(() => new LoraModel([{ name: 'a', kind: 'dense' } as never], { targetModules: ['a'] })).toThrow(/kind: expected one of/);
    expect(() => new LoraModel(opt350mModules(), { targetModules: ['query'] })).toThrow(/matched no module/);
    expect(() => new LoraModel(opt350mModules(), { targetModules: ['self_attn_layer_norm'] })).toThrow(/kind 'other'/);
    expect(() => new LoraModel(opt350mModules(), { targetModules: '(' })).toThrow(/not a valid regular expression/);
    expect(() => new LoraModel(opt350mModules(), { targetModules: ['q_proj'], lora_alpha: 3 } as never)).toThrow(/unknown option 'lora_alpha'/);
  });
});

describe('opt_tiny (peft 0.21)', () => {
  test('peft\'s adapter loads: config, tensors, counts', () => {
    const { modules } = loadTiny();
    const model = LoraModel.fromPretrained(modules, path.join(TINY, 'adapter'));
    const cfg = model.peftConfig.get('default')!;
    expect(cfg.r).toBe(8);
    expect(cfg.loraAlpha).toBe(32);
    expect(model.targetedModules().sort()).toEqual([
      'model.decoder.layers.0.self_attn.q_proj', 'model.decoder.layers.0.self_attn.v_proj',
      'model.decoder.layers.1.self_attn.q_proj', 'model.decoder.layers.1.self_attn.v_proj',
    ]);
    const layer = model.layers.get('model.decoder.layers.1.self_attn.v_proj')!;
    expect(layer.scaling.get('default')).toBe(4);
    const ck = Checkpoint.open(path.join(TINY, 'adapter', 'adapter_model.safetensors'));
    expect(Array.from(layer.loraA.get('default')!.toFloat32Array())).toEqual(Array.from(ck.readerOf(ck.names[0]).float32('base_model.model.model.decoder.layers.1.self_attn.v_proj.lora_A.weight')));
    ck.close();
    // loaded adapters are frozen (inference mode): trainable 0; total as peft counts it
    const meta = JSON.parse(Checkpoint.open(path.join(TINY, 'expected.safetensors')).metadata.case) as { trainable: number; total: number };
    expect(model.getNbTrainableParameters()).toEqual({ trainable: 0, total: meta.total });
    const trainable = LoraModel.fromPretrained(loadTiny().modules, path.join(TINY, 'adapter'), { isTrainable: true });
    expect(trainable.getNbTrainableParameters()).toEqual({ trainable: meta.trainable, total: meta.total });
  });

  test('tied weights count once, whether aliased in the metadata or passed as one Tensor twice', () => {
    const { tensors } = loadTiny();
    tensors.set('model.decoder.embed_tokens.weight', tensors.get('lm_head.weight')!);
    const m = new LoraModel(modulesFromStateDict(tensors), { targetModules: ['q_proj', 'v_proj'] });
    const meta = JSON.parse(Checkpoint.open(path.join(TINY, 'expected.safetensors')).metadata.case) as { total: number };
    expect(m.getNbTrainableParameters().total).toBe(meta.total - 4096 + 4 * 8 * 128);
    expect(m.modules.get('model.decoder.embed_tokens')!.tiedTo).toBe('lm_head');
  });

  test('mergeAndUnload reproduces merged_model.safetensors tensor by tensor', () => {
    const { modules } = loadTiny();
    const model = LoraModel.fromPretrained(modules, path.join(TINY, 'adapter'));
    const merged = model.mergeAndUnload();
    const ref = Checkpoint.open(path.join(TINY, 'merged_model.safetensors'));
    expect([...merged.keys()].sort()).toEqual(ref.names.sort());
    let changed = 0;
    for (const n of ref.names) {
      const want = ref.readerOf(n).float32(n);
      const got = merged.get(n)!.toFloat32Array();
      expectClose(got, want, 1e-5, n);
      if (n.includes('q_proj.weight') || n.includes('v_proj.weight')) changed++;
    }
    expect(changed).toBe(4);
    ref.close();
    expect(() => model.printTrainableParameters(() => undefined)).toThrow(/unloaded/); // as every other call
    expect(() => model.setAdapter('default')).toThrow(/unloaded/);
  });

  test('an adapter we save reloads to identical tensors and config', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-save-'));
    try {
      const { modules } = loadTiny();
      const model = new LoraModel(modules, { targetModules: ['q_proj', 'v_proj'], r: 4, loraAlpha: 16, initLoraWeights: false, seed: 7, taskType: 'CAUSAL_LM' });
      model.addAdapter('second', { targetModules: ['fc1'], r: 2, initLoraWeights: false, seed: 8 });
      model.savePretrained(dir);
      expect(fs.readdirSync(dir).sort()).toEqual(['README.md', 'adapter_config.json', 'adapter_model.safetensors', 'second']);
      expect(fs.readdirSync(path.join(dir, 'second')).sort()).toEqual(['README.md', 'adapter_config.json', 'adapter_model.safetensors']);
      const json = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
      const peftKeys = Object.keys(JSON.parse(fs.readFileSync(path.join(TINY, 'adapter', 'adapter_config.json'), 'utf8')) as object);
      expect(Object.keys(json)).toEqual(peftKeys);
      expect(json).toMatchObject({ r: 4, lora_alpha: 16, peft_type: 'LORA', inference_mode: true, task_type: 'CAUSAL_LM', target_modules: ['q_proj', 'v_proj'] });
      const names = Checkpoint.open(path.join(dir, 'adapter_model.safetensors')).names;
      expect(names).toContain('base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight');
      expect(names).toHaveLength(8);

      const again = LoraModel.fromPretrained(loadTiny().modules, dir);
      again.loadAdapter(path.join(dir, 'second'), 'second');
      expect(again.adapterNames).toEqual(['default', 'second']);
      for (const [mod, layer] of model.layers) {
        for (const a of layer.adapterNames) {
          const l2 = again.layers.get(mod)!;
          expect(Array.from(l2.loraA.get(a)!.toFloat32Array())).toEqual(Array.from(layer.loraA.get(a)!.toFloat32Array()));
          expect(Array.from(l2.loraB.get(a)!.toFloat32Array())).toEqual(Array.from(layer.loraB.get(a)!.toFloat32Array()));
          expect(l2.scaling.get(a)).toBe(layer.scaling.get(a));
        }
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('weights held as Float32Array (README example)', () => {
  test('merge writes peft\'s merged weight back into the array; unmerge restores it', () => {
    const base = Checkpoint.open(path.join(TINY, 'base_model.safetensors'));
    const ref = Checkpoint.open(path.join(TINY, 'merged_model.safetensors'));
    const name = 'model.decoder.layers.1.self_attn.q_proj';
    const q = base.readerOf(`${name}.weight`).float32(`${name}.weight`).slice();
    const original = q.slice();
    const W = Tensor.from(q, [64, 64]);
    const warnings: string[] = [];
    const model = LoraModel.fromPretrained([{ name, kind: 'linear', weight: W }], path.join(TINY, 'adapter'), { warn: (m) => warnings.push(m) });
    expect(warnings.join()).toMatch(/ignoring factors of 3 module\(s\) this model does not have/);
    model.mergeAdapter();
    q.set(W.toFloat32Array());
    expectClose(q, ref.readerOf(`${name}.weight`).float32(`${name}.weight`), 1e-5, 'merged q_proj');
    model.unmergeAdapter();
    expectClose(W.toFloat32Array(), original, 1e-6, 'unmerged q_proj');
    base.close();
    ref.close();
  });
});

describe('model-wide adapters', () => {
  function tiny(): LoraModel {
    return new LoraModel(loadTiny().modules, { targetModules: ['q_proj', 'v_proj'], r: 4, initLoraWeights: false, seed: 1 });
  }

  test('addAdapter does not activate; setAdapter and deleteAdapter act on every layer', () => {
    const m = tiny();
    m.addAdapter('b', { targetModules: ['v_proj', 'fc1'], r: 2, initLoraWeights: false, seed: 2 });
    expect(m.activeAdapters).toEqual(['default']);
    expect(m.layers.size).toBe(6);
    expect(m.layers.get('model.decoder.layers.0.fc1')!.activeAdapters).toEqual([]);
    m.setAdapter(['default', 'b']);
    expect(m.layers.get('model.decoder.layers.0.self_attn.v_proj')!.activeAdapters).toEqual(['default', 'b']);
    expect(m.layers.get('model.decoder.layers.0.self_attn.q_proj')!.activeAdapters).toEqual(['default']);
    expect(m.layers.get('model.decoder.layers.1.fc1')!.activeAdapters).toEqual(['b']);
    expect(m.getNbTrainableParameters().trainable).toBe(4 * 4 * 128 + 2 * 2 * 128 + 2 * 2 * (64 + 128));
    m.deleteAdapter('default');
    expect(m.activeAdapters).toEqual(['b']);
    expect(m.layers.has('model.decoder.layers.0.self_attn.q_proj')).toBe(false);
    expect(() => m.setAdapter('default')).toThrow(/unknown adapter 'default'/);
    expect(() => m.addAdapter('b', { targetModules: ['q_proj'] })).toThrow(/already exists/);
  });

  test('addWeightedAdapter (cat) gives Σ wᵢ·ΔWᵢ on every layer', () => {
    const m = tiny();
    m.addAdapter('b', { targetModules: ['q_proj', 'v_proj'], r: 2, loraAlpha: 6, initLoraWeights: false, seed: 3 });
    m.addWeightedAdapter(['default', 'b'], [0.7, 0.5], 'mix', { combinationType: 'cat' });
    expect(m.peftConfig.get('mix')!.r).toBe(6);
    for (const layer of m.layers.values()) {
      const d = (n: string) => layer.getDeltaWeight(n).toFloat32Array();
      const a = d('default'), b = d('b');
      expectClose(d('mix'), a.map((v, i) => 0.7 * v + 0.5 * b[i]), 1e-5, 'cat');
    }
  });

  test('a weighted adapter with per-layer ranks saves and reloads (rank_pattern)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-wsave-'));
    try {
      const m = tiny();
      m.addAdapter('b', { targetModules: ['v_proj'], r: 2, initLoraWeights: false, seed: 4 });
      m.addWeightedAdapter(['default', 'b'], [1, 1], 'mix', { combinationType: 'cat' });
      const ranks = m.targetedModules('mix').map((mod) => m.slot(mod, 'mix')!.r);
      expect(new Set(ranks)).toEqual(new Set([4, 6]));
      m.savePretrained(dir, { selectedAdapters: ['mix'] });
      const again = LoraModel.fromPretrained(loadTiny().modules, path.join(dir, 'mix'));
      for (const mod of m.targetedModules('mix')) {
        const want = m.layers.get(mod)!.getDeltaWeight('mix').toFloat32Array();
        expectClose(again.layers.get(mod)!.getDeltaWeight('default').toFloat32Array(), want, 1e-6, mod);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('adapter_config handling: unknown keys warn, unsupported features are refused', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-cfg-'));
    try {
      fs.copyFileSync(path.join(TINY, 'adapter', 'adapter_model.safetensors'), path.join(dir, 'adapter_model.safetensors'));
      const cfg = JSON.parse(fs.readFileSync(path.join(TINY, 'adapter', 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
      fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ ...cfg, some_future_key: 1 }));
      const warnings: string[] = [];
      LoraModel.fromPretrained(loadTiny().modules, dir, { warn: (w) => warnings.push(w) });
      expect(warnings.join()).toMatch(/ignoring unknown adapter_config keys: some_future_key/);
      fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ ...cfg, lora_bias: true }));
      expect(() => LoraModel.fromPretrained(loadTiny().modules, dir)).toThrow(/has no lora_B.bias, but the config sets lora_bias/);
      fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ ...cfg, target_parameters: ['w'] }));
      expect(() => LoraModel.fromPretrained(loadTiny().modules, dir)).toThrow(/target_parameters = \["w"\] is not supported/);
      fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ ...cfg, use_dora: true }));
      expect(() => LoraModel.fromPretrained(loadTiny().modules, dir)).toThrow(/has no lora_magnitude_vector, but the config sets use_dora/);
      fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ ...cfg, r: 4 }));
      expect(() => LoraModel.fromPretrained(loadTiny().modules, dir)).toThrow(/do not fit the layer.*check r and rank_pattern/);
      expect(() => LoraModel.fromPretrained(loadTiny().modules, path.join(dir, 'nope'))).toThrow(/dir: no adapter folder at/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('conv1d kinds follow the adapter tensors; saved adapters of conv1d modules reload', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-c1d-'));
    try {
      const W = Tensor.from(Float32Array.from({ length: 12 * 36 }, (_, i) => Math.sin(i)), [12, 36]); // GPT-2 c_attn: [in, out]
      const mods = [{ name: 'transformer.h.0.attn.c_attn', kind: 'conv1d' as const, weight: W }];
      const m = new LoraModel(mods, { targetModules: ['c_attn'], r: 2, initLoraWeights: false, seed: 5 });
      expect(m.layers.get('transformer.h.0.attn.c_attn')!.loraA.get('default')!.shape).toEqual([2, 12]);
      m.savePretrained(dir);
      // given as 'linear' by mistake, the factors' shapes say conv1d
      const again = LoraModel.fromPretrained([{ ...mods[0], kind: 'linear' }], dir);
      expect(again.modules.get('transformer.h.0.attn.c_attn')!.kind).toBe('conv1d');
      expect(Array.from(again.layers.get('transformer.h.0.attn.c_attn')!.loraB.get('default')!.toFloat32Array()))
        .toEqual(Array.from(m.layers.get('transformer.h.0.attn.c_attn')!.loraB.get('default')!.toFloat32Array()));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.each([
  ['embedding', 'embed_tokens', 'embedding'],
  ['conv2d_k3', 'conv', 'conv2d'],
  ['linear_dora', 'q_proj', 'linear'],
  ['conv1d_fan_in_fan_out', 'c_attn', 'conv1d'],
])('peft golden case %s through LoraModel', (name, mod, kind) => {
  test('fromPretrained (kind from the adapter tensors), mergeAndUnload = W_merged, save and reload identical', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-kind-'));
    try {
      const c = loadCase(name);
      const disk = writeCaseAsPeft(c, dir, mod);
      const load = () => {
        const ck = Checkpoint.open(disk.base);
        const sd = new Map(ck.names.map((n) => [n, ck.tensor(n)]));
        ck.close();
        return modulesFromStateDict(sd, { kinds: { [mod]: 'linear' } }); // deliberately wrong for embedding/conv1d
      };
      const model = LoraModel.fromPretrained(load(), disk.adapter);
      expect(model.modules.get(`blk.${mod}`)!.kind).toBe(kind);
      const saved = path.join(dir, 'saved');
      model.savePretrained(saved);
      const again = LoraModel.fromPretrained(load(), saved);
      const l1 = model.layers.get(`blk.${mod}`)!;
      const l2 = again.layers.get(`blk.${mod}`)!;
      for (const get of [(l: typeof l1) => l.loraA, (l: typeof l1) => l.loraB, (l: typeof l1) => l.loraMagnitude]) {
        const a = get(l1).get('default');
        const b = get(l2).get('default');
        expect(b?.shape).toEqual(a?.shape);
        if (a) expect(Array.from(b!.toFloat32Array())).toEqual(Array.from(a.toFloat32Array()));
      }
      const meta = c.meta as { use_dora?: boolean };
      expect(l1.loraMagnitude.has('default')).toBe(meta.use_dora === true);
      expectClose(model.mergeAndUnload().get(disk.weightName)!.toFloat32Array(), c.f32('W_merged'), 1e-5, `${name} merged`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
