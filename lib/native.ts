/**
 * The raw binding: the typed surface of the .node addon and its lazy loader. Native errors are
 * re-thrown as lorakit's own error classes (same message), so `instanceof` works in every realm.
 */
import { LoraRangeError, LoraTypeError, StateError } from './errors';
import { loadAddon } from './load_addon';

export interface NativeTensorHandle {
  write(data: Float32Array | Float64Array | Uint16Array | Int32Array | BigInt64Array): void;
  read(kind: 'f32'): Float32Array;
  read(kind: 'bits'): Uint16Array;
  read(kind: 'i32'): Int32Array;
  read(kind: 'i64'): BigInt64Array;
  dispose(): void;
  byteLength(): number;
  /** Writes seen by the storage (every call that writes it); -1 for a wrapped array's memory. */
  version(): number;
}

export interface BackwardTermArg {
  xa: NativeTensorHandle;
  u: NativeTensorHandle;
  A: NativeTensorHandle;
  B: NativeTensorHandle;
  scale: number;
  p: number;
  seed: number;
  stream: number;
  dA: NativeTensorHandle | null;
  dB: NativeTensorHandle | null;
}

export interface DoraBackwardTermArg {
  xa: NativeTensorHandle;
  u: NativeTensorHandle;
  A: NativeTensorHandle;
  B: NativeTensorHandle;
  magnitude: NativeTensorHandle;
  scale: number;
  p: number;
  seed: number;
  stream: number;
  /** f32 [out], the detached weight norm of the forward */
  norm: NativeTensorHandle;
  /** f32 [n, out], xa·Wᵀ + s·u·Bᵀ from the forward */
  pre: NativeTensorHandle;
}

export interface BackendInfo {
  /** The CPU kernel path chosen at load time ('amx', 'avx512bf16', 'avx512', 'avx2' or 'portable'); LORAKIT_CPU_PATH forces one. */
  cpuPath: string;
  /** The paths this CPU can run, best first. */
  cpuPaths: string[];
  threads: number;
  /** Backends compiled into this build. */
  compiled: string[];
  /** Backends compiled in and usable on this machine ('cuda' needs a GPU at run time). */
  usable: string[];
  /** The CUDA device, when 'cuda' is usable. */
  cudaDevice?: string;
  /** Why 'cuda' is not usable (what the build lacked, e.g. cuBLAS, or no GPU at run time); null when it is. */
  cudaUnavailable: string | null;
  /**
   * The CPU GEMM's block sizes now, and in `source` where they came from: the measured caches, and,
   * where two derivations give the same bits, which one the first large calls timed faster; `wInPlace`:
   * whether f32 weights are read in place (their rows broadcast by the microkernel) rather than packed;
   * `wInPlaceTimed`: whether that is decided per call shape, by timing both forms on the first large calls.
   */
  gemmBlocks: { mc: number; kc: number; nc: number; source: string; wInPlace: boolean; wInPlaceTimed: boolean };
}

/** The machine's ceilings measured natively (lorakit bench). */
export interface MeasuredPeaks {
  /** f32 FMA rate of the active CPU path on all pool threads, GFLOP/s. */
  fmaGflops: number;
  /** AMX bf16 tile rate, GFLOP/s (0 without AMX). */
  amxGflops: number;
  /** AVX512-BF16 vdpbf16ps rate, GFLOP/s, measured on the avx512bf16 path (0 on other paths). */
  bf16DotGflops: number;
  /** memcpy bandwidth, bytes read + written per second, GB/s. */
  copyGBs: number;
  /** Read-only bandwidth, GB/s. */
  readGBs: number;
  threads: number;
  /** The data caches the CPU GEMM sized its blocks for (bytes; L1d and L2 per core) and where they were read. */
  caches: { l1dBytes: number; l2Bytes: number; l3Bytes: number; source: string };
  /** The CPU GEMM's block sizes on this machine: rows of A per L2 block, K steps per block, columns of B per task. */
  gemmBlocks: { mc: number; kc: number; nc: number; source: string; wInPlace: boolean; wInPlaceTimed: boolean };
}

/** One step of exactMerge: [A, B, scale, DoRA magnitude | null, DoRA weight norm (f32 [out]) | null, record (undo steps) | null]. */
export type ExactStepArg = [
  NativeTensorHandle,
  NativeTensorHandle,
  number,
  NativeTensorHandle | null,
  NativeTensorHandle | null,
  NativeTensorHandle | null,
];

/** A quantized base's format (native/core/quant_formats.h says where each is defined). */
export type QuantFormatName = 'int8' | 'nf4' | 'fp4' | 'q8_0' | 'q4_0' | 'q4_k' | 'q6_k';

/**
 * A quantized W [rows = out, cols = in]: blocks of blockSize values run along each row (nf4/fp4:
 * bnb's blocksize, 64 by default; ggml formats: 32 or 256; int8: cols; 0 picks the format's
 * default). doubleQuant (nf4/fp4 only) quantizes the absmax values too, as bnb_4bit_use_double_quant.
 */
export interface QuantSpecArg {
  format: QuantFormatName;
  rows: number;
  cols: number;
  blockSize: number;
  doubleQuant: boolean;
}

/** The byte layout of a quantized weight (one buffer, 16-byte aligned sections). */
export interface QuantLayoutInfo {
  nbytes: number;
  dataOffset: number;
  dataBytes: number;
  nblocks: number;
}

/**
 * The kernel ops (native/napi/ops.h, one list there): each validates its arguments and runs on the
 * device of its tensors. Every op also has a Promise form `${op}Async` (AsyncKernelBinding).
 */
export interface KernelBinding {
  shrink(x: NativeTensorHandle, A: NativeTensorHandle, out: NativeTensorHandle): void;
  linearForward(
    x: NativeTensorHandle,
    W: NativeTensorHandle,
    bias: NativeTensorHandle | null,
    fanInFanOut: boolean,
    terms: Array<[NativeTensorHandle, NativeTensorHandle, number]>,
    y: NativeTensorHandle,
  ): void;
  /** Every adapter's shrink plus the fused forward in one call; u (if given) receives x·Aᵀ in the scratch dtype. */
  loraForward(
    x: NativeTensorHandle,
    W: NativeTensorHandle,
    bias: NativeTensorHandle | null,
    fanInFanOut: boolean,
    adapters: Array<[NativeTensorHandle, NativeTensorHandle, number, NativeTensorHandle | null]>,
    y: NativeTensorHandle,
  ): void;
  linearBackward(
    dy: NativeTensorHandle,
    W: NativeTensorHandle,
    fanInFanOut: boolean,
    terms: BackwardTermArg[],
    dx: NativeTensorHandle | null,
  ): void;
  mergeDelta(
    W: NativeTensorHandle,
    A: NativeTensorHandle,
    B: NativeTensorHandle,
    scale: number,
    fanInFanOut: boolean,
    out: NativeTensorHandle,
  ): void;
  conv2dMergeDelta(W: NativeTensorHandle, A: NativeTensorHandle, B: NativeTensorHandle, scale: number, out: NativeTensorHandle): void;
  /** Exact merge in place (native/core/exact_format.h): undo steps in order, then merge steps; one i32 record per merge step. */
  exactMerge(W: NativeTensorHandle, fanInFanOut: boolean, undo: ExactStepArg[], merge: ExactStepArg[]): NativeTensorHandle[];
  mixedLinearForward(
    x: NativeTensorHandle,
    W: NativeTensorHandle,
    bias: NativeTensorHandle | null,
    fanInFanOut: boolean,
    adapters: Array<[NativeTensorHandle, NativeTensorHandle, number]>,
    rowAdapter: Int32Array,
    y: NativeTensorHandle,
  ): void;
  /** wsq (f32 [out]) keeps ‖W_o‖² across calls: read when wsqReady, else written. */
  doraWeightNorm(
    W: NativeTensorHandle,
    A: NativeTensorHandle,
    B: NativeTensorHandle,
    scale: number,
    fanInFanOut: boolean,
    norm: NativeTensorHandle,
    wsq?: NativeTensorHandle | null,
    wsqReady?: boolean,
  ): void;
  doraLinearForward(
    x: NativeTensorHandle,
    xa: NativeTensorHandle,
    W: NativeTensorHandle,
    bias: NativeTensorHandle | null,
    fanInFanOut: boolean,
    /** written: xa·Aᵀ (kept for backward); null: scratch */
    u: NativeTensorHandle | null,
    A: NativeTensorHandle,
    B: NativeTensorHandle,
    scale: number,
    /** the weight norm [f32 out]: read (normReady) or written */
    norm: NativeTensorHandle,
    magnitude: NativeTensorHandle,
    y: NativeTensorHandle,
    /** written: x·Wᵀ + s·u·Bᵀ without k, in the scratch dtype (for backward); null in eval */
    pre: NativeTensorHandle | null,
    /** false: norm is computed into (wsq as doraWeightNorm's); default true */
    normReady?: boolean,
    wsq?: NativeTensorHandle | null,
    wsqReady?: boolean,
  ): void;
  doraLinearBackward(
    dy: NativeTensorHandle,
    W: NativeTensorHandle,
    fanInFanOut: boolean,
    term: DoraBackwardTermArg,
    dx: NativeTensorHandle | null,
    dA: NativeTensorHandle | null,
    dB: NativeTensorHandle | null,
    dmagnitude: NativeTensorHandle | null,
  ): void;
  doraMerge(
    W: NativeTensorHandle,
    A: NativeTensorHandle,
    B: NativeTensorHandle,
    scale: number,
    fanInFanOut: boolean,
    magnitude: NativeTensorHandle,
    norm: NativeTensorHandle,
    inverse: boolean,
    out: NativeTensorHandle,
  ): void;
  embeddingForward(
    indices: NativeTensorHandle,
    W: NativeTensorHandle,
    adapters: Array<[NativeTensorHandle, NativeTensorHandle, number]>,
    rowAdapter: Int32Array | null,
    y: NativeTensorHandle,
  ): void;
  embeddingBackward(
    indices: NativeTensorHandle,
    dy: NativeTensorHandle,
    A: NativeTensorHandle,
    B: NativeTensorHandle,
    scale: number,
    paddingIdx: number,
    dA: NativeTensorHandle | null,
    dB: NativeTensorHandle | null,
  ): void;
  conv2dForward(
    x: NativeTensorHandle,
    W: NativeTensorHandle,
    bias: NativeTensorHandle | null,
    geom: number[],
    terms: Array<{ xa: NativeTensorHandle; u: NativeTensorHandle; A: NativeTensorHandle; B: NativeTensorHandle; scale: number }>,
    y: NativeTensorHandle,
    imageAdapter?: Int32Array | null,
  ): void;
  conv2dBackward(
    dy: NativeTensorHandle,
    x: NativeTensorHandle,
    W: NativeTensorHandle,
    geom: number[],
    terms: Array<BackwardTermArg>,
    dx: NativeTensorHandle | null,
  ): void;
  dropout(x: NativeTensorHandle, p: number, seed: number, stream: number, out: NativeTensorHandle): void;
  convert(src: NativeTensorHandle, dst: NativeTensorHandle): void;
  allFinite(t: NativeTensorHandle): boolean;
  /** n values of ggml type `type` (core/ggml_blocks.h) as f32; host memory, the input is copied. */
  ggmlDequantize(type: number, src: Uint8Array, n: number): Float32Array;
  /** f32 values encoded as ggml type `type` (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 as ggml's quantize_row_*_ref; Q4_K, Q5_K, Q6_K one-pass). */
  ggmlQuantize(type: number, src: Float32Array): Uint8Array;
  /** rows of a ggml-typed W [rows, cols] decoded, merged as W + scale·B·A (A [r, cols], B [rows, r]) and encoded as outType. */
  ggmlMergeRows(type: number, src: Uint8Array, rows: number, cols: number, A: Float32Array, B: Float32Array, scale: number, outType: number): Uint8Array;
  /** out (i32 [nbytes / 4], w's device) = the quantized bytes of w (float [rows, cols]); the same bytes on cpu and cuda. */
  quantize(w: NativeTensorHandle, spec: QuantSpecArg, out: NativeTensorHandle): void;
  /** out (float [rows, cols]) = the dequantised weight of q (i32 [nbytes / 4]). */
  dequantize(q: NativeTensorHandle, spec: QuantSpecArg, out: NativeTensorHandle): void;
  /**
   * loraForward over a quantized W (no fanInFanOut): y = x·deq(W)ᵀ + bias + Σ scale·(x·Aᵀ)·Bᵀ, W dequantised inside the
   * GEMM. bf16 x (dy in the backward) uses deq(W) rounded to bf16, as bnb dequantises to its compute dtype; f32/f16 use it exactly.
   */
  quantLoraForward(
    x: NativeTensorHandle,
    q: NativeTensorHandle,
    spec: QuantSpecArg,
    bias: NativeTensorHandle | null,
    adapters: Array<[NativeTensorHandle, NativeTensorHandle, number, NativeTensorHandle | null]>,
    y: NativeTensorHandle,
  ): void;
  /** linearBackward over a quantized W (no fanInFanOut): dx = dy·deq(W) + adapter terms; dA, dB as usual. */
  quantLinearBackward(dy: NativeTensorHandle, q: NativeTensorHandle, spec: QuantSpecArg, terms: BackwardTermArg[], dx: NativeTensorHandle | null): void;
  /** One AdamW step in place (torch.optim.AdamW); state f32; master (f32) for 16-bit params. */
  adamwStep(
    param: NativeTensorHandle,
    grad: NativeTensorHandle,
    expAvg: NativeTensorHandle,
    expAvgSq: NativeTensorHandle,
    master: NativeTensorHandle | null,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    weightDecay: number,
    step: number,
  ): void;
  /** One SGD step in place (torch.optim.SGD); momentumBuffer (f32) is needed when momentum != 0. */
  sgdStep(
    param: NativeTensorHandle,
    grad: NativeTensorHandle,
    momentumBuffer: NativeTensorHandle | null,
    master: NativeTensorHandle | null,
    lr: number,
    momentum: number,
    dampening: number,
    nesterov: boolean,
    weightDecay: number,
    firstStep: boolean,
  ): void;
  /** dst (f32) += alpha·src */
  accumulate(dst: NativeTensorHandle, src: NativeTensorHandle, alpha: number): void;
  /** out (f32 [cols]) = alpha·Σ over the rows of x [..., cols] (a bias gradient). */
  columnSum(x: NativeTensorHandle, alpha: number, out: NativeTensorHandle): void;
  /** Σ x² in f64 */
  sumSquares(t: NativeTensorHandle): number;
  scaleInplace(t: NativeTensorHandle, alpha: number): void;
}

/** The name of a kernel op. */
export type KernelOp = keyof KernelBinding;

/**
 * The Promise forms of the kernel ops: the same checks, then the work runs on a libuv thread and
 * the tensors are busy (no dispose, no writes, no conflicting calls) until the promise settles.
 */
export type AsyncKernelBinding = {
  [K in KernelOp as `${K}Async`]: (...args: Parameters<KernelBinding[K]>) => Promise<ReturnType<KernelBinding[K]>>;
};

/** Bindings outside the kernel op list (native/napi/device.cc). */
export interface DeviceBinding {
  /** zero = false leaves a cuda tensor's memory uninitialised (for outputs a kernel overwrites). */
  NativeTensor: {
    new (dtype: string, shape: number[], device: string, zero?: boolean): NativeTensorHandle;
    /** A cpu tensor over the typed array's own memory (Tensor.wrap). */
    new (data: Float32Array | Uint16Array | Int32Array | BigInt64Array, dtype: string, shape: number[]): NativeTensorHandle;
  };
  backendInfo(): BackendInfo;
  /** The dtype of the shrink output u = x·Aᵀ on the device for activations of that dtype. */
  scratchDtype(device: string, dtype: string): string;
  /** False when a call on the device needs one float dtype for activations, weights and outputs. */
  mixedDtypes(device: string): boolean;
  setNumThreads(n: number): number;
  measurePeaks(bufferBytes: number): MeasuredPeaks;
  // CUDA extras (throw a TypeError in builds without the CUDA backend).
  cudaSynchronize(): void;
  cudaStreamCreate(): number;
  cudaStreamRelease(id: number): void;
  cudaStreamSynchronize(id: number): void;
  cudaSetStream(id: number): void;
  cudaCurrentStream(): number;
  cudaTimerStart(): void;
  cudaTimerStop(): number;
  cudaMemoryStats(): { allocatedBytes: number; cachedBytes: number; deviceMallocs: number };
  cudaEmptyCache(): void;
  cudaKernelStats(): CudaKernelStats;
  /** Graph capture and replay of repeated identical layer calls (native/cuda/graph_replay.h). */
  cudaSetGraphReplay(on: boolean): void;
  cudaBaseGemm(x: NativeTensorHandle, W: NativeTensorHandle, y: NativeTensorHandle, inputGrad: boolean): void;
}

/** What cuda.kernelStats() reports. */
export interface CudaKernelStats {
  /** The one-pass Hopper LoRA GEMM can run here (a cc 9.0 GPU). */
  sm90GemmUsable: boolean;
  /** Its launches so far. */
  sm90GemmLaunches: number;
  /** Whether graph replay is on (cuda.setGraphReplay, or LORAKIT_CUDA_GRAPHS=1 at load). */
  graphReplay: boolean;
  /** Graphs captured, calls served by a replay, captures that failed (that call then runs directly). */
  graphCaptures: number;
  graphReplays: number;
  graphFallbacks: number;
  /** Graphs cached now, and the scratch memory they hold. */
  graphs: number;
  graphHeldBytes: number;
}

/** Quantized-base functions outside the kernel op list (native/napi/quant.cc). */
export interface QuantBinding {
  /** The layout of a spec's bytes; TypeError / RangeError naming spec.<field> for a bad spec. */
  quantLayout(spec: QuantSpecArg): QuantLayoutInfo;
  /** bnb's signed dynamic 8-bit map (256 entries, ascending): the code book of double quant. */
  quantDynamicMap(): Float32Array;
}

export type NativeBinding = KernelBinding & AsyncKernelBinding & DeviceBinding & QuantBinding;

let cached: NativeBinding | undefined;

/** Loads the addon on first use (load_addon.ts); throws NativeLoadError listing what was tried. */
export function native(): NativeBinding {
  if (!cached) cached = loadAddon<NativeBinding>();
  return cached;
}

/** Calls into the addon, mapping its errors onto lorakit's error classes. */
export function call<T>(fn: (b: NativeBinding) => T): T {
  const b = native();
  try {
    return fn(b);
  } catch (e) {
    throw mapNativeError(e);
  }
}

/** call() for the Promise-returning bindings: rejections are mapped the same way. */
export async function callAsync<T>(fn: (b: NativeBinding) => Promise<T>): Promise<T> {
  const b = native();
  try {
    return await fn(b);
  } catch (e) {
    throw mapNativeError(e);
  }
}

function mapNativeError(e: unknown): unknown {
  const err = e as { code?: string; message?: string };
  const msg = err?.message ?? String(e);
  switch (err?.code) {
    case 'LORAKIT_TYPE':
      return new LoraTypeError(msg);
    case 'LORAKIT_RANGE':
      return new LoraRangeError(msg);
    case 'LORAKIT_STATE':
      return new StateError(msg);
    default:
      return e;
  }
}
