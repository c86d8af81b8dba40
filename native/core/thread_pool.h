// A persistent pool of worker threads sized to the cores. parallel_for splits [0, n) into
// contiguous chunks; a call made from inside a pool task runs inline (no nested parallelism).
#pragma once
#include <cstdint>
#include <functional>

namespace lorakit {

// fn(begin, end) is called for disjoint ranges covering [0, n). Deterministic split for a given
// thread count, so results never depend on scheduling.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk = 1);

int num_threads();
void set_num_threads(int n);  // n <= 0 restores the default (hardware concurrency)

}  // namespace lorakit
