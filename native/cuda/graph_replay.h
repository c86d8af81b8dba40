// CUDA graph replay of repeated identical calls (opt-in: set_graph_replay, or LORAKIT_CUDA_GRAPHS=1).
// A call is identified by everything its launches depend on (every pointer, shape, dtype, scalar,
// the stream): the second call with the same key captures its launches into a graph, later ones
// replay it with one cudaGraphLaunch, skipping the host work between launches (cuBLASLt setup,
// scratch allocation, launch configuration). Values behind the pointers may change freely (a
// weight updated in place is read at replay); any change of pointer, shape or scale is a new key.
// Scratch memory allocated during the capture stays with the graph (runtime.h GraphHold) until
// the graph is evicted (least recently used beyond kMaxGraphs). Plain C++ (no CUDA headers).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>
#include "../core/op_args.h"
#include "../core/tensor.h"

namespace lorakit {
namespace cuda {

struct GraphKey {
  static constexpr int kMaxWords = 48;
  uint64_t w[kMaxWords];
  int n = 0;
  bool overflow = false;  // too many words: the call is not graphed
  void add(uint64_t v) {
    if (n < kMaxWords) w[n++] = v;
    else overflow = true;
  }
  void add_ptr(const void* p) { add(reinterpret_cast<uintptr_t>(p)); }
  void add_f32(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    add(b);
  }
  bool operator==(const GraphKey& o) const { return n == o.n && std::memcmp(w, o.w, sizeof(uint64_t) * n) == 0; }
};

void set_graph_replay(bool on);
bool graph_replay();

struct GraphStats {
  uint64_t captures = 0;   // graphs captured
  uint64_t replays = 0;    // calls served by a graph launch
  uint64_t fallbacks = 0;  // captures that failed (the key then always runs directly)
  uint64_t graphs = 0;     // graphs cached now
  uint64_t held_bytes = 0; // scratch memory the cached graphs hold
};
GraphStats graph_stats();
// Destroys every cached graph and returns the memory they hold to the allocator.
void clear_graphs();
// Invalidates every cached graph: for state a graph holds a pointer to that is about to be freed
// (decode.cu's split-K counters when they grow).
void bump_graph_epoch();

// Runs work (launches on the current stream only) directly, or captured / replayed as above when
// replay is on. The first call of a key always runs directly, so what a capture must not do
// (algorithm timing, workspace allocation, synchronisation) happens then; a key whose capture
// fails runs directly from then on.
void run_graphed(GraphKey key, const std::function<void()>& work);

// Captures are taken only while gate() is true: a capture records whatever any thread launches
// on the stream meanwhile, so the addon allows them only with no async call in flight (a call on a
// worker thread then never captures; it replays graphs that exist). No gate: always allowed.
void set_graph_capture_gate(bool (*gate)());

// The key of a fused LoRA forward (ops.h lora_forward): every pointer, dtype and dimension its
// launches read, and each adapter's scale; u_out (training) too.
GraphKey lora_forward_key(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fifo,
                          const std::vector<FusedAdapter>& adapters, const TensorRef& y);

}  // namespace cuda
}  // namespace lorakit
