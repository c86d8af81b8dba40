/** lorakit: LoRA for Node.js with peft semantics over native CPU (and CUDA) kernels. */
export { Tensor } from './tensor';
export type { TensorOptions, TensorData } from './tensor';
export { QuantizedTensor, quantize, QUANT_FORMATS } from './quantized_tensor';
export type { QuantFormatName, QuantizeOptions, FromBytesOptions } from './quantized_tensor';
export type { DType, FloatDType, IntDType, Device } from './dtype';
export {
  LoraTypeError,
  DTypeError,
  ShapeError,
  LoraRangeError,
  AdapterError,
  StateError,
  NativeLoadError,
} from './errors';
export { LoraLayer } from './layers/lora_layer';
export type { AdapterOptions, MergeOptions, AdapterGrads, BackwardResult, LayerBackwardResult, InitLoraWeights } from './layers/lora_layer';
export type { MixedForwardOptions, LoraLinearForwardOptions, CombinationType, WeightedAdapterOptions } from './layers/lora_layer';
export { LoraLinear } from './layers/linear';
export type { LoraLinearOptions } from './layers/linear';
export type { MergeAndUnloadOptions } from './layers/quant_merge';
export { LoraEmbedding } from './layers/embedding';
export type { LoraEmbeddingOptions, EmbeddingIndices, EmbeddingBackwardResult } from './layers/embedding';
export { LoraConv2d } from './layers/conv2d';
export type { LoraConv2dOptions, Pair } from './layers/conv2d';
export { kernels, backendInfo, setNumThreads } from './kernels';
export { cuda, CudaStream } from './cuda';
export type { CudaAdamWOptions, CudaSgdOptions } from './cuda';
export type { KernelAdapter, LinearForwardOptions, MergeAdapterOptions } from './kernels';
export type { BackendInfo, CudaKernelStats, MeasuredPeaks } from './native';
export type { AddonSource, LoadedAddonInfo } from './load_addon';
export { bench, formatTable as formatBenchTable } from './bench';
export type { BenchOptions, BenchResult, BenchRow, BenchOp, BenchDType } from './bench';
export { Rng, manualSeed } from './rng';
export { SafetensorsFile, parseHeader } from './io/safetensors';
export type { SafetensorsEntry, SafetensorsHeader } from './io/safetensors';
export { SafetensorsReader } from './io/safetensors_reader';
export { SafetensorsStreamWriter, writeSafetensors, serializeHeader } from './io/safetensors_writer';
export type { TensorSpec, RawTensor } from './io/safetensors_writer';
export { Checkpoint } from './io/checkpoint';
export { LoraModel, ModulesToSaveWrapper, modulesFromStateDict, guessKind, readAdapter, mergeCheckpoint } from './model';
export type { ModuleTensors } from './model';
export type { LayerRngState } from './layers/lora_layer';
export type { LoraConfig, BiasMode, ModuleSpec, ModuleOptions, ModuleKind, FromStateDictOptions, ParamValue, FromPretrainedOptions, ModelMergeOptions, ModelMergeAndUnloadOptions, QuantizeOnLoad, LoadOptions, StreamMergeOptions, StreamMergeResult } from './model';
export { Parameter, countParameters } from './parameter';
export type { ParameterRole } from './parameter';
export { Optimizer, AdamW, SGD, clipGradNorm } from './train/optimizer';
export type { ParamGroup, ParamGroupSpec, ParamState, AdamWOptions, SGDOptions } from './train/optimizer';
export { LRScheduler, linearSchedule, cosineSchedule, linearWarmupDecayFactor, cosineWarmupFactor } from './train/schedule';
export type { WarmupScheduleOptions } from './train/schedule';
export { mseLoss, crossEntropyLoss } from './train/losses';
export type { LossResult, CrossEntropyOptions, Reduction } from './train/losses';
export { train } from './train/loop';
export type { TrainOptions, TrainResult, StepContext, StepLog, CheckpointTarget } from './train/loop';
export { ProgressBar } from './train/progress';
export { lossCurveSvg } from './train/plot';
export { GgufReader, GgufStreamWriter, serializeGgufHeader, ggufValue, GGML, ggmlType, ggmlTypeByName, dequantizeGgml, quantizeGgml, convertModelToGguf, adapterToGguf, ggufToPeft, mergeGguf } from './gguf';
export type { GgufTensorInfo, GgufTensorSpec, GgufKV, GgufValue, GgufArray, GgufValueType, ConvertModelOptions, ConvertResult, GgufOutType, AdapterToGgufOptions, AdapterToGgufResult, GgufToPeftOptions, GgufMergeOptions, GgufMergeResult } from './gguf';
