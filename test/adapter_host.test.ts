/**
 * adapter_io against the narrow interfaces of model/adapter_host.ts, with plain objects standing in
 * for LoraModel (as peft's save_and_load takes any model): what they write, LoraModel reads, and back.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LoraModel, SafetensorsReader, Tensor } from '../lib';
import { AdapterLayerView, AdapterLoadTarget, AdapterSaveSource } from '../lib/model/adapter_host';
import { loadAdapter, savePretrained } from '../lib/model/adapter_io';
import { LoraConfig, ResolvedLoraConfig, resolveConfig } from '../lib/model/config';
import { randomArray } from './helpers/reference';

const OUT = 12;
const IN = 10;
const R = 4;
let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-host-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

function layerView(A: Tensor, B: Tensor): AdapterLayerView {
  return { loraA: new Map([['default', A]]), loraB: new Map([['default', B]]), loraMagnitude: new Map(), loraBBias: new Map() };
}

function saveSource(A: Tensor, B: Tensor): AdapterSaveSource {
  const cfg = resolveConfig({ r: R, loraAlpha: 8, targetModules: ['q'] });
  return {
    modules: new Map([['blk.q', { kind: 'linear' as const, weight: [OUT, IN] }]]),
    layers: new Map([['blk.q', layerView(A, B)]]),
    adapterNames: ['default'],
    peftConfig: new Map<string, ResolvedLoraConfig>([['default', cfg]]),
    savedModules: new Map(),
    targetedModules: () => ['blk.q'],
    resolvedTargets: (c) => c.targetModules as string[],
    requireAdapter: (n) => n as string,
    requireAllData: () => {},
  };
}

test('savePretrained writes peft\'s files from a plain object; LoraModel.fromPretrained reads them', () => {
  const A = Tensor.from(randomArray(R * IN, 1), [R, IN]);
  const B = Tensor.from(randomArray(OUT * R, 2), [OUT, R]);
  savePretrained(saveSource(A, B), dir);
  expect(fs.readdirSync(dir).sort()).toEqual(['README.md', 'adapter_config.json', 'adapter_model.safetensors']);
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
  expect(cfg).toMatchObject({ r: R, lora_alpha: 8, target_modules: ['q'], peft_type: 'LORA' });
  expect(new SafetensorsReader(path.join(dir, 'adapter_model.safetensors')).names.sort()).toEqual([
    'base_model.model.blk.q.lora_A.weight',
    'base_model.model.blk.q.lora_B.weight',
  ]);
  const W = Tensor.from(new Float32Array(OUT * IN), [OUT, IN]);
  const model = LoraModel.fromPretrained([{ name: 'blk.q', kind: 'linear', weight: W }], dir);
  expect(model.layers.get('blk.q')!.loraA.get('default')!.toFloat32Array()).toEqual(A.toFloat32Array());
  expect(model.layers.get('blk.q')!.loraB.get('default')!.toFloat32Array()).toEqual(B.toFloat32Array());
  expect(model.layers.get('blk.q')!.scaling.get('default')).toBe(2);
  model.dispose();
});

/** A load target whose addAdapter makes zero factors of peft's shapes, as a model would (B with bOut rows). */
function loadTarget(outF: number, bOut = outF): AdapterLoadTarget & { added: string[]; deleted: string[]; configs: LoraConfig[] } {
  const layer = { loraA: new Map<string, Tensor>(), loraB: new Map<string, Tensor>(), loraMagnitude: new Map<string, Tensor>(), loraBBias: new Map<string, Tensor>() };
  const t = {
    added: [] as string[],
    deleted: [] as string[],
    configs: [] as LoraConfig[],
    modules: new Map([['blk.q', { kind: 'linear' as const, weight: [outF, IN] }]]),
    layers: new Map([['blk.q', layer]]),
    savedModules: new Map(),
    targetedModules: (name: string) => (t.added.includes(name) ? ['blk.q'] : []),
    addAdapter(name: string, config: LoraConfig) {
      t.added.push(name);
      t.configs.push(config);
      layer.loraA.set(name, Tensor.zeros([config.r!, IN]));
      layer.loraB.set(name, Tensor.zeros([bOut, config.r!]));
    },
    deleteAdapter(name: string) {
      t.deleted.push(name);
      t.added = t.added.filter((n) => n !== name);
      layer.loraA.delete(name);
      layer.loraB.delete(name);
    },
  };
  return t;
}

test('loadAdapter fills a plain object\'s layers through addAdapter; frozen unless isTrainable', () => {
  const W = Tensor.from(new Float32Array(OUT * IN), [OUT, IN]);
  const model = new LoraModel([{ name: 'blk.q', kind: 'linear', weight: W }], { r: R, loraAlpha: 8, targetModules: ['q'], initLoraWeights: false, seed: 3 });
  model.savePretrained(dir);
  const t = loadTarget(OUT);
  loadAdapter(t, dir, 'other', {});
  expect(t.added).toEqual(['other']);
  expect(t.configs[0]).toMatchObject({ r: R, loraAlpha: 8, inferenceMode: true });
  const saved = model.layers.get('blk.q')!;
  expect(t.layers.get('blk.q')!.loraA.get('other')!.toFloat32Array()).toEqual(saved.loraA.get('default')!.toFloat32Array());
  expect(t.layers.get('blk.q')!.loraB.get('other')!.toFloat32Array()).toEqual(saved.loraB.get('default')!.toFloat32Array());
  loadAdapter(t, dir, 'trainable', { isTrainable: true });
  expect(t.configs[1].inferenceMode).toBe(false);
  model.dispose();
});

test('loadAdapter takes the adapter back out when the factors do not fit the layer', () => {
  const W = Tensor.from(new Float32Array(OUT * IN), [OUT, IN]);
  const model = new LoraModel([{ name: 'blk.q', kind: 'linear', weight: W }], { r: R, targetModules: ['q'] });
  model.savePretrained(dir);
  model.dispose();
  const t = loadTarget(OUT, OUT + 1); // the layer's lora_B is not [out, r]
  expect(() => loadAdapter(t, dir, 'x', {})).toThrow(/do not fit the layer/);
  expect(t.deleted).toEqual(['x']);
  expect(t.added).toEqual([]);
});
