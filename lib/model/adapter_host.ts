/**
 * What reading and writing peft's adapter files needs from a model, and nothing more. peft's
 * save_and_load.py works the same way: get_peft_model_state_dict(model, …) and
 * set_peft_model_state_dict(model, …) take the model as an argument. LoraModel implements both
 * interfaces and passes itself; adapter_io.ts never imports it.
 */
import { Tensor } from '../tensor';
import { LoraConfig, ResolvedLoraConfig } from './config';
import { ModuleKind, ParamValue } from './modules';
import { ModuleTensors } from './modules_to_save';

/** One LoRA layer as the files see it: the factor tensors of each adapter, by adapter name. */
export interface AdapterLayerView {
  readonly loraA: ReadonlyMap<string, Tensor>;
  readonly loraB: ReadonlyMap<string, Tensor>;
  /** DoRA adapters only. */
  readonly loraMagnitude: ReadonlyMap<string, Tensor>;
  /** lora_bias adapters only: lora_B's bias. */
  readonly loraBBias: ReadonlyMap<string, Tensor>;
}

/** A module in some adapter's modulesToSave: each such adapter's copy of its tensors. */
export interface SavedModuleView {
  readonly modulesToSave: ReadonlyMap<string, ModuleTensors>;
}

/** A module as the files see it: its kind picks the tensor names, its weight (or shape) the factor shapes. */
export interface AdapterModuleView {
  readonly kind: ModuleKind;
  readonly weight: ParamValue;
  /** Loading a bias='all' / 'lora_only' adapter writes the saved bias into it (as peft's load_state_dict). */
  readonly bias?: ParamValue | null;
}

/** The part both directions share. */
export interface AdapterFactorsView {
  /** Every module of the model, by name. */
  readonly modules: ReadonlyMap<string, AdapterModuleView>;
  /** Module name → its LoRA layer; modules given as a shape only have none. */
  readonly layers: ReadonlyMap<string, AdapterLayerView>;
  /** Module name → its copies, for modules some adapter's modulesToSave names. */
  readonly savedModules: ReadonlyMap<string, SavedModuleView>;
  /** The modules carrying the adapter (peft: the ones its target_modules selected); all adapters' when none is named. */
  targetedModules(adapterName?: string): string[];
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
