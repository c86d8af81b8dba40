/** LoraModel against peft: the opt_tiny adapter written by peft, merged weights, parameter counts. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Checkpoint, LoraModel, Tensor, modulesFromStateDict } from '../lib';
import { opt350mModules } from './fixtures/opt350m';
import { GOLDEN_DIR, expectClose } from './helpers/golden';

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

  test('no match and bad targets give clear errors', () => {
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
    expect(model.printTrainableParameters(() => undefined)).toMatch(/^trainable params: 0 \|\| all params: 83,584 /);
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
