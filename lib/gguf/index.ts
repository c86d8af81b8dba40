/** GGUF: reading and writing, ggml's block formats, and the conversions between peft, Hugging Face and llama.cpp. */
export { GgufReader } from './reader';
export type { GgufTensorInfo } from './reader';
export { GgufStreamWriter, serializeGgufHeader } from './writer';
export type { GgufTensorSpec } from './writer';
export { kv as ggufValue } from './metadata';
export type { GgufKV, GgufValue, GgufArray, GgufValueType } from './metadata';
export { GGML, ggmlType, ggmlTypeByName } from './ggml_types';
export { dequantize as dequantizeGgml, quantize as quantizeGgml } from './codecs';
export { convertModelToGguf } from './convert_model';
export type { ConvertModelOptions, ConvertResult, GgufOutType } from './convert_model';
export { adapterToGguf } from './adapter_to_gguf';
export type { AdapterToGgufOptions, AdapterToGgufResult } from './adapter_to_gguf';
export { ggufToPeft } from './adapter_from_gguf';
export type { GgufToPeftOptions } from './adapter_from_gguf';
export { mergeGguf } from './merge';
export type { GgufMergeOptions, GgufMergeResult } from './merge';
