// graph_replay.h: the graph cache, keyed by the call's words plus the stream and the epoch.
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>
#include "common.cuh"
#include "graph_replay.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace {

constexpr size_t kMaxGraphs = 64;

struct KeyHash {
  size_t operator()(const GraphKey& k) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the words
    for (int i = 0; i < k.n; i++) h = (h ^ k.w[i]) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};

enum class State { Seen, Capturing, Ready, Direct };

struct Entry {
  State state = State::Seen;
  cudaGraphExec_t exec = nullptr;
  std::vector<std::pair<void*, size_t>> held;
  uint64_t last_use = 0;
};

struct Cache {
  std::mutex mu;
  std::unordered_map<GraphKey, Entry, KeyHash> entries;
  uint64_t clock = 0;
  GraphStats stats;
};

Cache& cache() {
  static Cache* c = new Cache();  // leaked: no teardown after the driver is gone
  return *c;
}

std::atomic<bool> g_on{[] {
  const char* e = std::getenv("LORAKIT_CUDA_GRAPHS");
  return e && std::string(e) == "1";
}()};
std::atomic<uint64_t> g_epoch{0};
std::atomic<bool (*)()> g_gate{nullptr};

// Frees what an entry owns; the exec is freed by the driver once launches in flight complete.
void destroy(Entry& e) {
  if (e.exec) cudaGraphExecDestroy(e.exec);
  e.exec = nullptr;
  for (auto& b : e.held) cuda::free(b.first, b.second);
  e.held.clear();
}

void evict_locked(Cache& c) {
  while (c.entries.size() > kMaxGraphs) {
    auto oldest = c.entries.end();
    for (auto it = c.entries.begin(); it != c.entries.end(); ++it)
      if (it->second.state != State::Capturing && (oldest == c.entries.end() || it->second.last_use < oldest->second.last_use))
        oldest = it;
    if (oldest == c.entries.end()) return;
    destroy(oldest->second);
    c.entries.erase(oldest);
  }
}

uint64_t held_bytes(const Entry& e) {
  uint64_t s = 0;
  for (auto& b : e.held) s += b.second;
  return s;
}

}  // namespace

void set_graph_capture_gate(bool (*gate)()) { g_gate.store(gate); }

void set_graph_replay(bool on) {
  g_on.store(on);
  if (!on) clear_graphs();
}

bool graph_replay() { return g_on.load(); }

GraphStats graph_stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  GraphStats s = c.stats;
  s.graphs = 0;
  s.held_bytes = 0;
  for (auto& kv : c.entries)
    if (kv.second.state == State::Ready) {
      s.graphs++;
      s.held_bytes += held_bytes(kv.second);
    }
  return s;
}

void clear_graphs() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto it = c.entries.begin(); it != c.entries.end();) {
    if (it->second.state == State::Capturing) {  // its thread finishes it; the epoch makes it stale
      ++it;
      continue;
    }
    destroy(it->second);
    it = c.entries.erase(it);
  }
  g_epoch.fetch_add(1);
}

void bump_graph_epoch() { clear_graphs(); }

void run_graphed(GraphKey key, const std::function<void()>& work) {
  if (!g_on.load() || key.overflow) return work();
  cudaStream_t st = stream();
  key.add_ptr(st);
  key.add(g_epoch.load());
  if (key.overflow) return work();
  Cache& c = cache();
  {
    std::unique_lock<std::mutex> lock(c.mu);
    auto it = c.entries.find(key);
    if (it == c.entries.end()) {
      Entry e;
      e.last_use = ++c.clock;
      c.entries.emplace(key, std::move(e));
      evict_locked(c);
      lock.unlock();
      return work();  // first sight: direct (it may time algorithms or allocate workspaces)
    }
    Entry& e = it->second;
    e.last_use = ++c.clock;
    if (e.state == State::Ready) {
      LK_CUDA(cudaGraphLaunch(e.exec, st), "cudaGraphLaunch");
      c.stats.replays++;
      return;
    }
    bool (*gate)() = g_gate.load();
    if (e.state != State::Seen || (gate && !gate())) {
      lock.unlock();
      return work();
    }
    e.state = State::Capturing;
  }
  // Second sight: capture. Nothing runs during a capture, so the graph is launched after. Relaxed
  // mode: the allocator may cudaMalloc a block the pool lacks; a call that would synchronise the
  // capturing stream still fails the capture.
  GraphHold hold;
  bool ok = cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed) == cudaSuccess;
  bool capturing = ok;
  if (ok) {
    try {
      work();
    } catch (...) {
      ok = false;  // the capture must still be ended; a real error recurs in the direct run below
    }
  }
  cudaGraph_t graph = nullptr;
  if (capturing) ok = cudaStreamEndCapture(st, &graph) == cudaSuccess && graph && ok;
  std::vector<std::pair<void*, size_t>> held = hold.finish();
  ok = ok && hold.unreleased() == 0;  // a block the work kept would be written by each replay
  cudaGraphExec_t exec = nullptr;
  if (ok) ok = cudaGraphInstantiateWithFlags(&exec, graph, 0) == cudaSuccess;
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();  // a failed capture leaves a non-sticky error
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.entries.find(key);
    if (it == c.entries.end()) {  // cleared meanwhile (clear_graphs skips capturing entries, so not expected)
      Entry e;
      it = c.entries.emplace(key, std::move(e)).first;
    }
    Entry& e = it->second;
    if (ok) {
      e.state = State::Ready;
      e.exec = exec;
      e.held = std::move(held);
      c.stats.captures++;
      LK_CUDA(cudaGraphLaunch(e.exec, st), "cudaGraphLaunch");
      return;
    }
    e.state = State::Direct;
    c.stats.fallbacks++;
  }
  if (exec) cudaGraphExecDestroy(exec);
  for (auto& b : held) cuda::free(b.first, b.second);
  work();
}

GraphKey lora_forward_key(const TensorRef& x, const TensorRef& W, const TensorRef* bias, bool fifo,
                          const std::vector<FusedAdapter>& adapters, const TensorRef& y) {
  GraphKey k;
  k.add(0x4c6f7261ull);  // this op
  k.add_ptr(x.data);
  k.add(uint64_t(x.dtype) << 32 | uint64_t(W.dtype) << 16 | uint64_t(y.dtype));
  k.add(uint64_t(x.numel()));
  k.add_ptr(W.data);
  k.add(uint64_t(W.dim(0)));
  k.add(uint64_t(W.dim(1)));
  k.add_ptr(bias ? bias->data : nullptr);
  k.add(bias ? uint64_t(bias->dtype) : 0xff);
  k.add(fifo);
  k.add_ptr(y.data);
  for (const auto& a : adapters) {
    k.add_ptr(a.A.data);
    k.add_ptr(a.B.data);
    k.add(uint64_t(a.A.dtype) << 16 | uint64_t(a.B.dtype));
    k.add(uint64_t(a.A.dim(0)));
    k.add_f32(a.scale);
    k.add_ptr(a.u_out ? a.u_out->data : nullptr);
    k.add(a.u_out ? uint64_t(a.u_out->dtype) : 0xff);
  }
  return k;
}

}  // namespace cuda
}  // namespace lorakit
