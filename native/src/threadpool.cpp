// threadpool.cpp — persistent workers for data-parallel kernels. A run() publishes a job by
// bumping a generation counter; workers spin on it briefly (decode issues ~100 runs per token,
// so waking from a condition variable each time would cost more than the work) and then sleep.
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
}  // namespace

struct ThreadPool::Impl {
  int n_threads = 1;
  std::vector<std::thread> workers;

  // the current job (written by run() before the generation bump, read by workers after it)
  const std::function<void(int)>* fn = nullptr;
  int n_tasks = 0;
  std::atomic<int> next_task{0};
  std::atomic<int> workers_done{0};
  std::atomic<uint64_t> generation{0};
  std::atomic<bool> stop{false};

  std::mutex mu;  // guards sleeping workers' wait and first_error
  std::condition_variable cv;
  std::atomic<int> n_sleeping{0};
  std::exception_ptr first_error;

  std::mutex run_mu;  // one run() at a time per pool

  void do_tasks() {
    t_inside_task = true;
    for (;;) {
      int i = next_task.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_tasks) break;
      try {
        (*fn)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!first_error) first_error = std::current_exception();
        next_task.store(n_tasks, std::memory_order_relaxed);  // skip the rest
      }
    }
    t_inside_task = false;
  }

  void worker_loop() {
    uint64_t seen = 0;
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
      do_tasks();
      workers_done.fetch_add(1, std::memory_order_acq_rel);
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
  p.fn = &fn;
  p.n_tasks = n_tasks;
  p.first_error = nullptr;
  p.next_task.store(0, std::memory_order_relaxed);
  p.workers_done.store(0, std::memory_order_relaxed);
  p.generation.fetch_add(1, std::memory_order_seq_cst);  // publishes the job
  if (p.n_sleeping.load(std::memory_order_seq_cst) > 0) {
    { std::lock_guard<std::mutex> lock(p.mu); }
    p.cv.notify_all();
  }
  p.do_tasks();
  const int n_workers = (int)p.workers.size();
  int polls = 0;
  while (p.workers_done.load(std::memory_order_acquire) < n_workers) {
    LKV_CPU_RELAX();
    if (++polls > 4096) std::this_thread::yield();  // a worker was descheduled: don't hog its core
  }
  p.fn = nullptr;
  if (p.first_error) {
    std::exception_ptr e = p.first_error;
    p.first_error = nullptr;
    std::rethrow_exception(e);
  }
}

}  // namespace lkv
