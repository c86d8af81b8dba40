export { LoraModel } from './lora_model';
export type { AdapterSlot, FromPretrainedOptions, ModelMergeOptions } from './lora_model';
export type { LoraConfig, BiasMode } from './config';
export { modulesFromStateDict, guessKind } from './modules';
export type { ModuleSpec, ModuleOptions, ModuleKind, FromStateDictOptions, ParamValue } from './modules';
export { readAdapter } from './adapter_io';
export type { LoadOptions } from './adapter_io';
export { mergeCheckpoint } from './stream_merge';
export type { StreamMergeOptions, StreamMergeResult } from './stream_merge';
