/**
 * What reading and writing peft's adapter files needs from a model, and nothing more. peft's
 * save_and_load.py works the same way: get_peft_model_state_dict(model, …) and
 * set_peft_model_state_dict(model, …) take the model as an argument. LoraModel implements both
 * interfaces and passes itself; adapter_io.ts never imports it.
 */
import { Tensor } from '../tensor';
import { LoraConfig, ResolvedLoraConfig } from './config';
import { ModuleKind, ParamValue } from './modules';

/** One LoRA layer as the files see it: the factor tensors of each adapter, by adapter name. */
export interface AdapterLayerView {
  readonly loraA: ReadonlyMap<string, Tensor>;
  readonly loraB: ReadonlyMap<string, Tensor>;
  /** DoRA adapters only. */
  readonly loraMagnitude: ReadonlyMap<string, Tensor>;
}

/** A module as the files see it: its kind picks the tensor names, its weight (or shape) the factor shapes. */
export interface AdapterModuleView {
  readonly kind: ModuleKind;
  readonly weight: ParamValue;
}

/** The part both directions share. */
export interface AdapterFactorsView {
  /** Every module of the model, by name. */
  readonly modules: ReadonlyMap<string, AdapterModuleView>;
  /** Module name → its LoRA layer; modules given as a shape only have none. */
  readonly layers: ReadonlyMap<string, AdapterLayerView>;
  /** The modules carrying the adapter (peft: the ones its target_modules selected). */
  targetedModules(adapterName: string): string[];
}

/** What loading needs (set_peft_model_state_dict): a way to add the adapter, and to take it back on failure. */
export interface AdapterLoadTarget extends AdapterFactorsView {
  /** Injects a new adapter whose factors the loader then overwrites; a layer per targeted module. */
  addAdapter(name: string, config: LoraConfig): unknown;
  deleteAdapter(name: string): unknown;
}

/** What saving needs (get_peft_model_state_dict plus the config and model card). */
export interface AdapterSaveSource extends AdapterFactorsView {
  readonly adapterNames: readonly string[];
  /** Adapter name → its resolved config. */
  readonly peftConfig: ReadonlyMap<string, ResolvedLoraConfig>;
  /** The target list recorded in adapter_config.json ('all-linear' expanded). */
  resolvedTargets(c: ResolvedLoraConfig): string[] | string;
  /** Throws a typed error naming argName unless the adapter exists. */
  requireAdapter(name: unknown, argName: string): string;
  /** Throws unless every module carrying the adapters holds its weight tensor. */
  requireAllData(op: string, adapters: string[]): void;
}
