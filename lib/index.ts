/** lorakit: LoRA for Node.js with peft semantics over native CPU (and CUDA) kernels. */
export { Tensor } from './tensor';
export type { TensorOptions, TensorData } from './tensor';
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
export type { AdapterOptions, MergeOptions, AdapterGrads, BackwardResult, InitLoraWeights } from './layers/lora_layer';
export { LoraLinear } from './layers/linear';
export type { LoraLinearOptions } from './layers/linear';
export { kernels, backendInfo, setNumThreads } from './kernels';
export type { KernelAdapter, LinearForwardOptions, MergeAdapterOptions } from './kernels';
export type { BackendInfo } from './native';
export { Rng, manualSeed } from './rng';
export { SafetensorsFile, parseHeader } from './io/safetensors';
export type { SafetensorsEntry, SafetensorsHeader } from './io/safetensors';
