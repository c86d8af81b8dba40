/**
 * Adapters on disk in peft's layout: adapter_config.json, adapter_model.safetensors with keys
 * `base_model.model.<module>.lora_A.weight` (adapter name stripped; embeddings use
 * `lora_embedding_A`; lora_bias adds `lora_B.bias`), trainable biases of bias='all' / 'lora_only'
 * as `<module>.base_layer.bias` (LoRA layers) or `<module>.bias` (others), a modules_to_save copy
 * as `<module>.<param>` (get_peft_model_state_dict's names, checked against peft 0.21), README.md. The default adapter goes to the directory itself, others to
 * sub-directories named after them. Works on any model through the interfaces of adapter_host.ts
 * (as peft's save_and_load.py takes the model as an argument); LoraModel passes itself.
 */
import * as fs from 'fs';
import * as path from 'path';
import { AdapterError, LoraRangeError, LoraTypeError, ShapeError, StateError, shapeStr } from '../errors';
import { writeFileAtomic, writeFileAtomicSync } from '../io/atomic';
import { SafetensorsFile } from '../io/safetensors';
import { SafetensorsReader } from '../io/safetensors_reader';
import { writeSafetensors, writeSafetensorsAsync } from '../io/safetensors_writer';
import { Tensor } from '../tensor';
import { AdapterFactorsView, AdapterLoadTarget, AdapterModuleView, AdapterSaveSource } from './adapter_host';
import { LoraConfig, fromPeftJson, peftJsonText, resolveConfig, toPeftJson } from './config';
import { kindFromFactors } from './factors';
import { modelCard } from './model_card';
import { ModuleKind, ModuleSpec, shapeOf } from './modules';
import { matchesModulesToSave } from './modules_to_save';

export const CONFIG_FILE = 'adapter_config.json';
export const WEIGHTS_FILE = 'adapter_model.safetensors';
const PREFIX = 'base_model.model.';

export interface AdapterTensors {
  A: Tensor | null;
  B: Tensor | null;
  /** DoRA magnitude vector [out] (peft's lora_magnitude_vector). */
  magnitude: Tensor | null;
  /** lora_B's bias [out] (peft's lora_bias). */
  loraBBias: Tensor | null;
  /** Embedding adapters are stored as lora_embedding_A/B. */
  embedding: boolean;
}

export interface AdapterOnDisk {
  config: LoraConfig;
  /** Module name → its factors (native tensors in the file's dtype). */
  modules: Map<string, AdapterTensors>;
  /** Module name → its trained bias (bias='all' / 'lora_only'). */
  biases: Map<string, Tensor>;
  /** Module name → its modules_to_save copy, by parameter name ('weight', 'bias'). */
  saved: Map<string, Map<string, Tensor>>;
}

function lorakitVersion(): string {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return (require(path.join(__dirname, '..', '..', 'package.json')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** The saved tensor names of one module's factors. */
export function peftKeys(moduleName: string, kind: ModuleKind): { A: string; B: string; magnitude: string; loraBBias: string } {
  const magnitude = `${PREFIX}${moduleName}.lora_magnitude_vector`; // peft strips '.weight' here
  const loraBBias = `${PREFIX}${moduleName}.lora_B.bias`;
  return kind === 'embedding'
    ? { A: `${PREFIX}${moduleName}.lora_embedding_A`, B: `${PREFIX}${moduleName}.lora_embedding_B`, magnitude, loraBBias }
    : { A: `${PREFIX}${moduleName}.lora_A.weight`, B: `${PREFIX}${moduleName}.lora_B.weight`, magnitude, loraBBias };
}

/** The saved name of a trained bias: LoRA layers keep the base layer's bias as `base_layer.bias`. */
export function peftBiasKey(moduleName: string, isLoraLayer: boolean): string {
  return `${PREFIX}${moduleName}${isLoraLayer ? '.base_layer' : ''}.bias`;
}

const KEY_RE = /^(?:base_model\.model\.)?(.+)\.(lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|lora_embedding_B|lora_magnitude_vector(?:\.weight)?)$/;

const ADAPTER_FOLDER = `the folder peft's save_pretrained writes, with ${CONFIG_FILE} and ${WEIGHTS_FILE}`;

/** The two files of an adapter directory, checked to exist; `argName` names the argument in errors. */
function adapterPaths(dir: string, argName: string): { cfgPath: string; wPath: string } {
  if (typeof dir !== 'string' || dir.length === 0) throw new LoraTypeError(`${argName}: expected an adapter directory path`);
  if (!fs.existsSync(dir)) throw new LoraRangeError(`${argName}: no adapter folder at ${dir} (expected ${ADAPTER_FOLDER})`);
  if (!fs.statSync(dir).isDirectory()) {
    const hint = [CONFIG_FILE, WEIGHTS_FILE].includes(path.basename(dir)) ? `: give its folder, ${path.dirname(dir)}` : ` (expected ${ADAPTER_FOLDER})`;
    throw new LoraRangeError(`${argName}: ${dir} is a file, not an adapter folder${hint}`);
  }
  const cfgPath = path.join(dir, CONFIG_FILE);
  const wPath = path.join(dir, WEIGHTS_FILE);
  if (!fs.existsSync(cfgPath)) throw new LoraRangeError(`${argName}: ${dir} has no ${CONFIG_FILE}`);
  if (!fs.existsSync(wPath)) {
    const bin = fs.existsSync(path.join(dir, 'adapter_model.bin'));
    throw new LoraRangeError(`${argName}: ${dir} has no ${WEIGHTS_FILE}${bin ? ' (only adapter_model.bin, a pickle lorakit does not read: re-save with safe_serialization=True)' : ''}`);
  }
  return { cfgPath, wPath };
}

/** Reads an adapter directory (config + tensors), validating both. */
export function readAdapter(dir: string, warn?: (m: string) => void): AdapterOnDisk {
  return readAdapterArg(dir, 'dir', warn);
}

/** readAdapter with errors naming the caller's argument (the streaming merge's `adapter`). */
export function readAdapterArg(dir: string, argName: string, warn?: (m: string) => void): AdapterOnDisk {
  const { cfgPath, wPath } = adapterPaths(dir, argName);
  return parseAdapter(fs.readFileSync(cfgPath, 'utf8'), cfgPath, new SafetensorsReader(wPath), wPath, warn);
}

/** readAdapter with the file reads on libuv's pool (the weights file is read whole: adapters are small). */
export async function readAdapterAsync(dir: string, warn?: (m: string) => void): Promise<AdapterOnDisk> {
  const { cfgPath, wPath } = adapterPaths(dir, 'dir');
  const [text, weights] = await Promise.all([fs.promises.readFile(cfgPath, 'utf8'), fs.promises.readFile(wPath)]);
  return parseAdapter(text, cfgPath, new SafetensorsFile(weights, wPath), wPath, warn);
}

interface TensorSource {
  readonly names: string[];
  tensor(name: string): Tensor;
  close?(): void;
}

function parseAdapter(text: string, cfgPath: string, reader: TensorSource, wPath: string, warn?: (m: string) => void): AdapterOnDisk {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    reader.close?.();
    throw new LoraTypeError(`${cfgPath}: not valid JSON (${(e as Error).message})`);
  }
  let config: LoraConfig;
  try {
    config = fromPeftJson(json, cfgPath, warn);
  } catch (e) {
    reader.close?.();
    throw e;
  }
  const a: AdapterOnDisk = { config, modules: new Map(), biases: new Map(), saved: new Map() };
  const saveList = config.modulesToSave ?? null;
  const biasMode = config.bias ?? 'none';
  try {
    for (const key of reader.names) {
      const m = KEY_RE.exec(key);
      if (!m) {
        // Not a LoRA factor: a modules_to_save copy's tensor, or a trained bias.
        const rest = key.startsWith(PREFIX) ? key.slice(PREFIX.length) : key;
        const dot = rest.lastIndexOf('.');
        const mod = rest.slice(0, dot);
        const param = rest.slice(dot + 1);
        if (dot > 0 && matchesModulesToSave(saveList, mod)) {
          if (!a.saved.has(mod)) a.saved.set(mod, new Map());
          a.saved.get(mod)!.set(param, reader.tensor(key));
        } else if (dot > 0 && param === 'bias' && biasMode !== 'none') {
          a.biases.set(mod.endsWith('.base_layer') ? mod.slice(0, -'.base_layer'.length) : mod, reader.tensor(key));
        } else {
          throw new AdapterError(
            `${wPath}: tensor '${key}' is neither a LoRA factor (lora_A/lora_B .weight, lora_B.bias, lora_embedding_A/B, lora_magnitude_vector) ` +
              `nor a bias (the config's bias is '${biasMode}') nor part of a modules_to_save module (${JSON.stringify(saveList)})`,
          );
        }
        continue;
      }
      const [, mod, part] = m;
      const t = a.modules.get(mod) ?? { A: null, B: null, magnitude: null, loraBBias: null, embedding: false };
      if (part.startsWith('lora_embedding')) t.embedding = true;
      a.modules.set(mod, t);
      const tensor = reader.tensor(key);
      if (part === 'lora_A.weight' || part === 'lora_embedding_A') t.A = tensor;
      else if (part.startsWith('lora_magnitude_vector')) t.magnitude = tensor;
      else if (part === 'lora_B.bias') t.loraBBias = tensor;
      else t.B = tensor;
    }
  } catch (e) {
    disposeAdapter(a);
    throw e;
  } finally {
    reader.close?.();
  }
  const dora = config.useDora === true;
  const loraBias = config.loraBias === true;
  for (const [mod, t] of a.modules) {
    let problem: string | null = null;
    if (!t.A || !t.B) problem = `lacks ${t.A ? 'lora_B' : 'lora_A'}`;
    else if (dora !== (t.magnitude !== null))
      problem = dora ? 'has no lora_magnitude_vector, but the config sets use_dora' : 'has a lora_magnitude_vector, but the config does not set use_dora';
    else if (loraBias !== (t.loraBBias !== null))
      problem = loraBias ? 'has no lora_B.bias, but the config sets lora_bias' : 'has a lora_B.bias, but the config does not set lora_bias';
    if (problem) {
      disposeAdapter(a);
      throw new AdapterError(`${wPath}: module '${mod}' ${problem}`);
    }
  }
  return a;
}

/** Frees the tensors readAdapter returned. */
export function disposeAdapter(a: AdapterOnDisk): void {
  for (const t of a.modules.values()) {
    t.A?.dispose();
    t.B?.dispose();
    t.magnitude?.dispose();
    t.loraBBias?.dispose();
  }
  for (const b of a.biases.values()) b.dispose();
  for (const m of a.saved.values()) for (const t of m.values()) t.dispose();
}

/** The module kind an adapter's factors imply for a module, given its weight shape (a weight both layouts fit stays conv1d if it was). */
function kindOf(m: AdapterModuleView, t: AdapterTensors): ModuleKind {
  const k = kindFromFactors(shapeOf(m.weight), { A: t.A!.shape, B: t.B!.shape, embedding: t.embedding }, m.kind === 'conv1d');
  return k ?? m.kind; // the shape check reports the mismatch
}

/**
 * The modules with the kinds the adapter's own tensors imply (fromPretrained: a conv1d saved by
 * peft loads as conv1d whatever kind the caller guessed). Copies; the input is not changed.
 */
export function specsForAdapter(modules: Iterable<ModuleSpec> | Map<string, ModuleSpec>, a: AdapterOnDisk): ModuleSpec[] {
  const list = [...(modules instanceof Map ? modules.values() : modules)].map((s) => ({ ...s }));
  for (const spec of list) {
    if (!(spec.weight instanceof Tensor) && !Array.isArray(spec.weight)) continue; // the model's constructor reports it
    const t = a.modules.get(spec.name);
    if (t) spec.kind = kindOf(spec, t);
  }
  return list;
}

/** Copies loaded factors into a model's adapter `name` (already added), checking names and shapes. */
export function assignFactors(model: AdapterFactorsView, a: AdapterOnDisk, name: string, source: string, warn: (m: string) => void): void {
  const targeted = new Set(model.targetedModules(name));
  const absent: string[] = [];
  for (const mod of a.modules.keys()) {
    if (!model.modules.has(mod)) absent.push(mod);
    else if (!targeted.has(mod)) throw new AdapterError(`${source}: the adapter has factors for module '${mod}', which its target_modules do not select in this model`);
  }
  // A model given as a subset of modules (weights held by another stack) uses what it has, as peft ignores unexpected keys.
  if (absent.length > 0) warn(`lorakit: ${source}: ignoring factors of ${absent.length} module(s) this model does not have (${absent.slice(0, 3).join(', ')}${absent.length > 3 ? ', ...' : ''})`);
  const missing: string[] = [];
  for (const mod of targeted) {
    const t = a.modules.get(mod);
    if (!t) {
      missing.push(mod);
      continue;
    }
    const layer = model.layers.get(mod);
    if (!layer) throw new StateError(`${source}: module '${mod}' was given as a shape only; loading weights needs its tensor`);
    const A = layer.loraA.get(name)!;
    const B = layer.loraB.get(name)!;
    const wantA = A.shape.join();
    const gotA = t.A!.shape.join();
    if (wantA !== gotA || B.shape.join() !== t.B!.shape.slice(0, B.shape.length).join())
      throw new ShapeError(factorMismatch(source, mod, model.modules.get(mod)!, { A: A.shape, B: B.shape }, { A: t.A!.shape, B: t.B!.shape }));
    A.copyFrom(t.A!);
    B.copyFrom(t.B!);
    if (t.magnitude) {
      const mag = layer.loraMagnitude.get(name);
      if (!mag || mag.numel !== t.magnitude.numel)
        throw new ShapeError(`${source}: module '${mod}': lora_magnitude_vector ${shapeStr(t.magnitude.shape)} does not fit the layer (${mag ? shapeStr(mag.shape) : 'no DoRA'})`);
      mag.copyFrom(t.magnitude);
    }
    if (t.loraBBias) copyChecked(layer.loraBBias.get(name), t.loraBBias, `${source}: module '${mod}': lora_B.bias`);
  }
  if (missing.length > 0) warn(`lorakit: ${source}: no factors for ${missing.length} targeted module(s) (${missing.slice(0, 3).join(', ')}...); they keep their initial values`);
  assignExtras(model, a, name, source, warn);
}

function copyChecked(dst: Tensor | null | undefined, src: Tensor, what: string): void {
  if (!dst) throw new AdapterError(`${what}: the model has no tensor to load it into`);
  if (dst.shape.join() !== src.shape.join()) throw new ShapeError(`${what}: ${shapeStr(src.shape)} does not fit the model's ${shapeStr(dst.shape)}`);
  dst.copyFrom(src);
}

/**
 * The trained biases go into the modules' own bias tensors, in place (peft's load_state_dict writes
 * the base model's biases); modules_to_save tensors go into the adapter's copies.
 */
function assignExtras(model: AdapterFactorsView, a: AdapterOnDisk, name: string, source: string, warn: (m: string) => void): void {
  const absent: string[] = [];
  for (const [mod, b] of a.biases) {
    const m = model.modules.get(mod);
    if (!m) {
      absent.push(`${mod}.bias`);
      continue;
    }
    if (!(m.bias instanceof Tensor))
      throw new StateError(`${source}: the adapter trained the bias of module '${mod}', which ${m.bias ? 'was given as a shape only' : 'has no bias in this model'}`);
    copyChecked(m.bias, b, `${source}: bias of module '${mod}'`);
  }
  for (const [mod, params] of a.saved) {
    const copy = model.savedModules.get(mod)?.modulesToSave.get(name);
    if (!copy) {
      if (model.modules.has(mod)) throw new AdapterError(`${source}: the adapter saved module '${mod}', but it holds no copy of it for adapter '${name}'`);
      absent.push(mod);
      continue;
    }
    for (const [param, t] of params) {
      const dst = param === 'weight' ? copy.weight : param === 'bias' ? copy.bias : null;
      copyChecked(dst, t, `${source}: modules_to_save '${mod}.${param}'`);
    }
  }
  if (absent.length > 0) warn(`lorakit: ${source}: ignoring ${absent.length} saved tensor(s) of modules this model does not have (${absent.slice(0, 3).join(', ')})`);
}

/**
 * Why loaded factors do not fit a layer: the same rank with other feature sizes means the base
 * weight is not the one the adapter was trained on; the same feature sizes with another rank
 * means the config's r / rank_pattern disagree with the file.
 */
function factorMismatch(source: string, mod: string, m: AdapterModuleView, want: { A: readonly number[]; B: readonly number[] }, got: { A: readonly number[]; B: readonly number[] }): string {
  const head = `${source}: module '${mod}': lora_A ${shapeStr(got.A)} / lora_B ${shapeStr(got.B)} do not fit the layer (expects ${shapeStr(want.A)} / ${shapeStr(want.B)})`;
  const featuresMatch = want.A.slice(1).join() === got.A.slice(1).join() && want.B[0] === got.B[0];
  if (featuresMatch) return `${head}: the ranks differ, so check r and rank_pattern in ${CONFIG_FILE}`;
  const W = shapeOf(m.weight);
  const transposed = m.kind === 'conv1d' || m.kind === 'embedding';
  const outF = got.B[0];
  const inF = got.A.slice(1).reduce((a, b) => a * b, 1);
  const implied = m.kind === 'conv2d' ? `${outF} output and ${inF} input·kernel features` : shapeStr(transposed ? [inF, outF] : [outF, inF]);
  return `${head}: the base weight's shape is wrong: '${mod}' is ${shapeStr(W)}, but the adapter was trained on a ${implied} weight (a different model or model size?)`;
}

export interface LoadOptions {
  /** Load as trainable (peft's is_trainable); by default the adapter is frozen (inference mode). */
  isTrainable?: boolean;
  warn?: (message: string) => void;
}

/** model.loadAdapter: adds the adapter from disk under `name` (not activated, as in peft). */
export function loadAdapter(model: AdapterLoadTarget, dir: string, name: string, opts: LoadOptions): void {
  const warn = opts.warn ?? ((m: string) => console.warn(m));
  addAdapterFrom(model, readAdapter(dir, warn), dir, name, opts, warn);
}

/** loadAdapter with the file reads off the JS thread. */
export async function loadAdapterAsync(model: AdapterLoadTarget, dir: string, name: string, opts: LoadOptions): Promise<void> {
  const warn = opts.warn ?? ((m: string) => console.warn(m));
  addAdapterFrom(model, await readAdapterAsync(dir, warn), dir, name, opts, warn);
}

function addAdapterFrom(model: AdapterLoadTarget, a: AdapterOnDisk, dir: string, name: string, opts: LoadOptions, warn: (m: string) => void): void {
  try {
    for (const [mod, t] of a.modules) {
      const m = model.modules.get(mod);
      const kind = m && kindOf(m, t);
      if (m && m.kind !== kind) throw new AdapterError(`${dir}: the factors of module '${mod}' are for a ${kind} module, but the model has it as ${m.kind}`);
    }
    model.addAdapter(name, { ...a.config, inferenceMode: !(opts.isTrainable ?? false) });
    try {
      assignFactors(model, a, name, dir, warn);
    } catch (e) {
      model.deleteAdapter(name);
      throw e;
    }
  } finally {
    disposeAdapter(a);
  }
}

interface SaveItem {
  dir: string;
  tensors: Map<string, Tensor>;
  config: string;
  card: string;
}

/** What savePretrained writes, adapter by adapter (validated before any file is touched). */
function savePlan(model: AdapterSaveSource, dir: string, selected?: string[]): SaveItem[] {
  if (typeof dir !== 'string' || dir.length === 0) throw new LoraTypeError('dir: expected a directory path');
  const names = selected ?? [...model.adapterNames];
  names.forEach((n, i) => model.requireAdapter(n, `opts.selectedAdapters[${i}]`));
  model.requireAllData('savePretrained', names);
  return names.map((name) => {
    const cfg = model.peftConfig.get(name)!;
    const tensors = new Map<string, Tensor>();
    for (const mod of model.targetedModules(name)) {
      const m = model.modules.get(mod)!;
      const layer = model.layers.get(mod)!;
      const keys = peftKeys(mod, m.kind);
      tensors.set(keys.A, layer.loraA.get(name)!);
      tensors.set(keys.B, layer.loraB.get(name)!);
      const mag = layer.loraMagnitude.get(name);
      if (mag) tensors.set(keys.magnitude, mag);
      const lb = layer.loraBBias.get(name);
      if (lb) tensors.set(keys.loraBBias, lb);
    }
    for (const [key, t] of trainedBiases(model, name)) tensors.set(key, t);
    for (const [mod, w] of model.savedModules) {
      const c = w.modulesToSave.get(name);
      if (!c) continue;
      tensors.set(`${PREFIX}${mod}.weight`, c.weight);
      if (c.bias) tensors.set(`${PREFIX}${mod}.bias`, c.bias);
    }
    const targets = model.resolvedTargets(cfg);
    return {
      dir: name === 'default' ? dir : path.join(dir, name),
      tensors,
      config: peftJsonText(toPeftJson(resolveConfig(configOf(cfg)), targets)),
      card: modelCard(cfg, lorakitVersion()),
    };
  });
}

/**
 * The biases an adapter trains, under the names peft 0.21 saves them: bias='all' every bias of the
 * model except modules_to_save ones (their copies are saved instead), bias='lora_only' those of the
 * modules carrying the adapter.
 */
function trainedBiases(model: AdapterSaveSource, name: string): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  const mode = model.peftConfig.get(name)!.bias;
  if (mode === 'none') return out;
  const lora = new Set(model.targetedModules());
  const own = new Set(model.targetedModules(name));
  for (const [mod, m] of model.modules) {
    if (!m.bias || model.savedModules.has(mod) || (mode === 'lora_only' && !own.has(mod))) continue;
    if (!(m.bias instanceof Tensor))
      throw new StateError(`savePretrained: adapter '${name}' trains the bias of module '${mod}', which was given as a shape only`);
    out.set(peftBiasKey(mod, lora.has(mod)), m.bias);
  }
  return out;
}

/** model.savePretrained: each adapter to `dir` (default) or `dir/<name>`, atomically, file by file. */
export function savePretrained(model: AdapterSaveSource, dir: string, selected?: string[]): void {
  for (const it of savePlan(model, dir, selected)) {
    fs.mkdirSync(it.dir, { recursive: true });
    writeSafetensors(path.join(it.dir, WEIGHTS_FILE), it.tensors, { format: 'pt' });
    writeFileAtomicSync(path.join(it.dir, CONFIG_FILE), it.config);
    const card = path.join(it.dir, 'README.md');
    if (!fs.existsSync(card)) writeFileAtomicSync(card, it.card);
  }
}

/** savePretrained with the file I/O on libuv's pool; the same files, each written atomically. */
export async function savePretrainedAsync(model: AdapterSaveSource, dir: string, selected?: string[]): Promise<void> {
  for (const it of savePlan(model, dir, selected)) {
    await fs.promises.mkdir(it.dir, { recursive: true });
    await writeSafetensorsAsync(path.join(it.dir, WEIGHTS_FILE), it.tensors, { format: 'pt' });
    await writeFileAtomic(path.join(it.dir, CONFIG_FILE), it.config);
    const card = path.join(it.dir, 'README.md');
    if (!fs.existsSync(card)) await writeFileAtomic(card, it.card);
  }
}

/** A LoraConfig from a resolved one (drops lorakit-only fields that are not saved). */
function configOf(c: ReturnType<typeof resolveConfig>): LoraConfig {
  const { seed: _seed, outputHead: _head, ...rest } = c;
  return rest;
}
