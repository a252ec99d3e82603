// threadpool.cpp — persistent workers for data-parallel kernels. A run() publishes a job by
// bumping a generation counter; workers spin on it briefly (decode issues ~100 runs per token,
// so waking from a condition variable each time would cost more than the work) and then sleep.
//
// The caller takes tasks too, and a run() ends when every task has *finished*, not when every
// worker has checked in: on a shared machine a worker may be preempted for milliseconds, and
// the caller then simply does its share instead of waiting for it. Tasks are claimed with a
// compare-and-swap on one word holding (generation, next task), so a worker that wakes up late
// can never claim a task of a job other than the one whose function it read.
#include "threadpool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LKV_CPU_RELAX() _mm_pause()
#else
#define LKV_CPU_RELAX() std::this_thread::yield()
#endif

namespace lkv {

namespace {
// How long an idle worker polls for the next job before blocking. Long enough to bridge the gap
// between consecutive kernels of one token, short enough not to burn a core between requests.
constexpr auto kSpinTime = std::chrono::microseconds(300);
thread_local bool t_inside_task = false;  // a task that calls run() again runs it inline

constexpr uint64_t kIndexMask = 0xffffffffu;
}  // namespace

struct ThreadPool::Impl {
  int n_threads = 1;
  std::vector<std::thread> workers;

  // The current job. `claim` = (generation << 32) | next task index; fn and n_tasks are written
  // before the generation is published and stay valid until all of its tasks have finished.
  std::atomic<const std::function<void(int)>*> fn{nullptr};
  std::atomic<int> n_tasks{0};
  alignas(64) std::atomic<uint64_t> claim{0};
  alignas(64) std::atomic<int> finished{0};  // tasks of the current job that have returned
  alignas(64) std::atomic<uint32_t> generation{0};
  std::atomic<bool> failed{false};  // a task threw: skip the rest
  std::atomic<bool> stop{false};

  std::mutex mu;  // guards sleeping workers' wait and first_error
  std::condition_variable cv;
  std::atomic<int> n_sleeping{0};
  std::exception_ptr first_error;

  std::mutex run_mu;  // one run() at a time per pool

  // Claims and runs tasks of job `gen` until none are left (or the job is no longer current).
  // fn/n_tasks are read after the claim word: if they belong to a newer job, the claim word has
  // moved on too (run() closes it before writing them) and the compare-and-swap fails.
  void do_tasks(uint32_t gen) {
    t_inside_task = true;
    for (;;) {
      uint64_t c = claim.load(std::memory_order_acquire);
      if ((uint32_t)(c >> 32) != gen) break;
      const std::function<void(int)>* f = fn.load(std::memory_order_acquire);
      const int n = n_tasks.load(std::memory_order_acquire);
      if ((c & kIndexMask) >= (uint64_t)n) break;
      if (!claim.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel, std::memory_order_relaxed)) continue;
      // task (c & kIndexMask) of `gen` is ours, and `gen` cannot end before it finishes
      if (!failed.load(std::memory_order_relaxed)) {
        try {
          (*f)((int)(c & kIndexMask));
        } catch (...) {
          std::lock_guard<std::mutex> lock(mu);
          if (!first_error) first_error = std::current_exception();
          failed.store(true, std::memory_order_relaxed);
        }
      }
      finished.fetch_add(1, std::memory_order_acq_rel);
    }
    t_inside_task = false;
  }

  void worker_loop() {
    uint32_t seen = 0;
    for (;;) {
      // spin, then sleep until the generation moves on
      auto t0 = std::chrono::steady_clock::now();
      int polls = 0;
      while (generation.load(std::memory_order_acquire) == seen && !stop.load(std::memory_order_relaxed)) {
        LKV_CPU_RELAX();
        if (++polls % 256 == 0 && std::chrono::steady_clock::now() - t0 > kSpinTime) {
          std::unique_lock<std::mutex> lock(mu);
          n_sleeping.fetch_add(1, std::memory_order_seq_cst);
          cv.wait(lock, [&] {
            return generation.load(std::memory_order_seq_cst) != seen || stop.load(std::memory_order_seq_cst);
          });
          n_sleeping.fetch_sub(1, std::memory_order_relaxed);
          break;
        }
      }
      if (stop.load(std::memory_order_acquire)) return;
      seen = generation.load(std::memory_order_acquire);
      do_tasks(seen);
    }
  }
};

ThreadPool::ThreadPool(int n_threads) : impl_(new Impl) {
  if (n_threads <= 0) n_threads = (int)std::thread::hardware_concurrency();
  if (n_threads <= 0) n_threads = 1;
  impl_->n_threads = n_threads;
  try {
    for (int i = 1; i < n_threads; i++) impl_->workers.emplace_back([this] { impl_->worker_loop(); });
  } catch (...) {
    impl_->stop.store(true);
    { std::lock_guard<std::mutex> lock(impl_->mu); }
    impl_->cv.notify_all();
    for (auto& t : impl_->workers) t.join();
    delete impl_;
    throw;
  }
}

ThreadPool::~ThreadPool() {
  impl_->stop.store(true, std::memory_order_seq_cst);
  { std::lock_guard<std::mutex> lock(impl_->mu); }
  impl_->cv.notify_all();
  for (auto& t : impl_->workers) t.join();
  delete impl_;
}

int ThreadPool::size() const { return impl_->n_threads; }

void ThreadPool::run(int n_tasks, const std::function<void(int)>& fn) {
  if (n_tasks <= 0) return;
  Impl& p = *impl_;
  if (p.workers.empty() || n_tasks == 1 || t_inside_task) {
    for (int i = 0; i < n_tasks; i++) fn(i);
    return;
  }
  std::lock_guard<std::mutex> run_lock(p.run_mu);
  // The previous job is over (all its tasks finished). Close the claim word under the new
  // generation before replacing fn/n_tasks, so that no late worker can pair a claim of the old
  // job with the new function; then open it.
  const uint32_t gen = p.generation.load(std::memory_order_relaxed) + 1;
  p.claim.store(((uint64_t)gen << 32) | kIndexMask, std::memory_order_seq_cst);
  p.fn.store(&fn, std::memory_order_release);
  p.n_tasks.store(n_tasks, std::memory_order_release);
  p.first_error = nullptr;
  p.failed.store(false, std::memory_order_relaxed);
  p.finished.store(0, std::memory_order_relaxed);
  p.claim.store((uint64_t)gen << 32, std::memory_order_release);
  p.generation.store(gen, std::memory_order_seq_cst);  // publishes the job
  if (p.n_sleeping.load(std::memory_order_seq_cst) > 0) {
    { std::lock_guard<std::mutex> lock(p.mu); }
    p.cv.notify_all();
  }
  p.do_tasks(gen);
  // wait for tasks that workers claimed and still run
  int polls = 0;
  while (p.finished.load(std::memory_order_acquire) < n_tasks) {
    LKV_CPU_RELAX();
    if (++polls > 4096) std::this_thread::yield();  // a worker was descheduled: don't hog its core
  }
  if (p.first_error) {
    std::exception_ptr e = p.first_error;
    p.first_error = nullptr;
    std::rethrow_exception(e);
  }
}

}  // namespace lkv
