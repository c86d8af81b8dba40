/** LoraModel.fromPretrained's body: a model over the modules carrying an adapter read from disk. */
import { AdapterFactorsView } from './adapter_host';
import { AdapterOnDisk, LoadOptions, assignFactors, disposeAdapter, specsForAdapter } from './adapter_io';
import { LoraConfig } from './config';
import { ModuleSpec } from './modules';
import { QuantizeOnLoad, checkQuantizeOnLoad, quantizeModules } from './quantize_modules';
import type { QuantizedTensor } from '../quantized_tensor';

export interface FromPretrainedOptions extends LoadOptions {
  adapterName?: string;
  /** Quantize every linear module's weight on load, targeted or not (quantize_modules.ts); the model owns the copies. */
  quantize?: QuantizeOnLoad;
}

/** What modelFromAdapter needs of the model it creates. */
export interface LoadedModel extends AdapterFactorsView {
  adoptQuantized(made: QuantizedTensor[]): void;
  dispose(): void;
}

/** A model carrying the adapter read from dir (module kinds follow its tensors); frees the read tensors. */
export function modelFromAdapter<M extends LoadedModel>(
  create: (modules: ModuleSpec[], config: LoraConfig, name: string) => M,
  modules: Iterable<ModuleSpec> | Map<string, ModuleSpec>,
  a: AdapterOnDisk,
  dir: string,
  opts: FromPretrainedOptions,
  warn: (m: string) => void,
): M {
  const name = opts.adapterName ?? 'default';
  try {
    const specs = specsForAdapter(modules, a);
    const q = opts.quantize === undefined ? null : quantizeModules(specs, checkQuantizeOnLoad(opts.quantize, 'opts.quantize'));
    let model: M;
    try {
      model = create(q?.specs ?? specs, { ...a.config, inferenceMode: !(opts.isTrainable ?? false) }, name);
    } catch (e) {
      for (const t of q?.made ?? []) t.dispose();
      throw e;
    }
    model.adoptQuantized(q?.made ?? []);
    try {
      assignFactors(model, a, name, dir, warn);
    } catch (e) {
      model.dispose();
      throw e;
    }
    return model;
  } finally {
    disposeAdapter(a);
  }
}
