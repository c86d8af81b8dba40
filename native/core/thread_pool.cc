#include "thread_pool.h"
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace lorakit {
namespace {

thread_local bool tl_in_pool_task = false;

class Pool {
 public:
  explicit Pool(int n) { start(n); }
  ~Pool() { stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int n) {
    std::lock_guard<std::mutex> call(call_mutex_);
    stop();
    start(n);
  }

  // Runs task(i) for i in [0, ntasks) on the workers and the calling thread.
  void run(int ntasks, const std::function<void(int)>& task) {
    std::lock_guard<std::mutex> call(call_mutex_);  // one parallel region at a time
    {
      std::lock_guard<std::mutex> lk(m_);
      task_ = &task;
      ntasks_ = ntasks;
      next_.store(0);
      pending_ = ntasks;
      error_ = nullptr;
      generation_++;
    }
    cv_.notify_all();
    drain(task, ntasks);
    std::unique_lock<std::mutex> lk(m_);
    // Also wait for every worker to leave drain(): a late one must not see the next call's state.
    done_cv_.wait(lk, [&] { return pending_ == 0 && active_ == 0; });
    task_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void start(int n) {
    quit_ = false;
    for (int i = 1; i < n; i++) workers_.emplace_back([this] { loop(); });
  }
  void stop() {
    {
      std::lock_guard<std::mutex> lk(m_);
      quit_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }
  // task and ntasks are this call's, read under m_ by the caller (never the shared fields).
  void drain(const std::function<void(int)>& task, int ntasks) {
    tl_in_pool_task = true;
    for (;;) {
      int i = next_.fetch_add(1);
      if (i >= ntasks) break;
      try {
        task(i);
      } catch (...) {
        std::lock_guard<std::mutex> lk(m_);
        if (!error_) error_ = std::current_exception();
      }
      std::lock_guard<std::mutex> lk(m_);
      if (--pending_ == 0) done_cv_.notify_all();
    }
    tl_in_pool_task = false;
  }
  void loop() {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* task;
      int ntasks;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return quit_ || (generation_ != seen && task_ != nullptr); });
        if (quit_) return;
        seen = generation_;
        task = task_;
        ntasks = ntasks_;
        active_++;
      }
      drain(*task, ntasks);
      std::lock_guard<std::mutex> lk(m_);
      if (--active_ == 0 && pending_ == 0) done_cv_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex call_mutex_, m_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* task_ = nullptr;
  int ntasks_ = 0;
  std::atomic<int> next_{0};
  int pending_ = 0;
  int active_ = 0;  // workers inside drain() for the current call
  uint64_t generation_ = 0;
  bool quit_ = false;
  std::exception_ptr error_;
};

int default_threads() {
  unsigned h = std::thread::hardware_concurrency();
  return h == 0 ? 1 : static_cast<int>(std::min(h, 256u));
}

Pool& pool() {
  // Process-wide (shared by every worker_thread's addon instance); calls are serialised by run().
  // Never destroyed: at exit a libuv thread may still be inside run(), and joining then would race.
  static Pool* p = new Pool(default_threads());
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }

void set_num_threads(int n) { pool().resize(n <= 0 ? default_threads() : std::min(n, 256)); }

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk) {
  if (n <= 0) return;
  // Inside a pool task the call runs inline: run() holds call_mutex_ for the outer region, so a
  // nested run() would wait on it forever.
  int64_t max_tasks = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
  int tasks = static_cast<int>(std::min<int64_t>(max_tasks, int64_t(num_threads()) * 4));
  if (tasks <= 1 || tl_in_pool_task) {
    fn(0, n);
    return;
  }
  pool().run(tasks, [&](int t) {
    int64_t b = n * t / tasks, e = n * (t + 1) / tasks;
    if (b < e) fn(b, e);
  });
}

}  // namespace lorakit
