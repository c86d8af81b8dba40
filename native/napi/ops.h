// The one list of kernel ops: each is exported as `name` (sync) and `nameAsync` (a Promise; the
// work runs on a libuv thread), both from its builder, which validates the JS arguments and
// returns a KernelCall (kernel_call.h) whose work calls the device's backend (core/backend.h).
// Adding an op: a line here, its builder in the family file, its entry in core/backend.h with the
// cpu and cuda implementations, and its signature in lib/native.ts.
#pragma once
#include <napi.h>
#include "kernel_call.h"

// X(jsName, Builder) — family file in brackets.
#define LORAKIT_KERNEL_OPS(X)                         \
  /* linear.cc */                                     \
  X(shrink, BuildShrink)                              \
  X(linearForward, BuildLinearForward)                \
  X(loraForward, BuildLoraForward)                    \
  X(linearBackward, BuildLinearBackward)              \
  /* merge.cc */                                      \
  X(mergeDelta, BuildMergeDelta)                      \
  X(conv2dMergeDelta, BuildConv2dMergeDelta)          \
  X(exactMerge, BuildExactMerge)                      \
  /* mixed_batch.cc */                                \
  X(mixedLinearForward, BuildMixedLinearForward)      \
  /* dora.cc */                                       \
  X(doraWeightNorm, BuildDoraWeightNorm)              \
  X(doraLinearForward, BuildDoraLinearForward)        \
  X(doraLinearBackward, BuildDoraLinearBackward)      \
  X(doraMerge, BuildDoraMerge)                        \
  /* embedding.cc */                                  \
  X(embeddingForward, BuildEmbeddingForward)          \
  X(embeddingBackward, BuildEmbeddingBackward)        \
  /* conv2d.cc */                                     \
  X(conv2dForward, BuildConv2dForward)                \
  X(conv2dBackward, BuildConv2dBackward)              \
  /* elementwise.cc */                                \
  X(dropout, BuildDropout)                            \
  X(convert, BuildConvert)                            \
  X(allFinite, BuildAllFinite)                        \
  /* ggml_blocks.cc */                                \
  X(ggmlDequantize, BuildGgmlDequantize)              \
  X(ggmlQuantize, BuildGgmlQuantize)                  \
  X(ggmlMergeRows, BuildGgmlMergeRows)                \
  /* quant.cc */                                      \
  X(quantize, BuildQuantize)                          \
  X(dequantize, BuildDequantize)                      \
  X(quantLoraForward, BuildQuantLoraForward)          \
  X(quantLinearBackward, BuildQuantLinearBackward)    \
  /* optim.cc */                                      \
  X(adamwStep, BuildAdamwStep)                        \
  X(sgdStep, BuildSgdStep)                            \
  X(accumulate, BuildAccumulate)                      \
  X(columnSum, BuildColumnSum)                        \
  X(sumSquares, BuildSumSquares)                      \
  X(scaleInplace, BuildScaleInplace)

namespace lorakit {
namespace napi {

#define LORAKIT_DECLARE_BUILDER(name, build) KernelCall build(const Napi::CallbackInfo& info);
LORAKIT_KERNEL_OPS(LORAKIT_DECLARE_BUILDER)
#undef LORAKIT_DECLARE_BUILDER

// Exports every op of the list, sync and async.
void InitKernelOps(Napi::Env env, Napi::Object exports);
// The quantized-base functions outside the op list (quant.cc): quantLayout, quantDynamicMap.
void InitQuantFunctions(Napi::Env env, Napi::Object exports);

}  // namespace napi
}  // namespace lorakit
