// threadpool.h — a fixed pool of worker threads for data-parallel kernels.
// run(n, fn) calls fn(i) for every i in [0, n) across the workers and the calling thread, and
// returns when all are done. Tasks should be coarse (a block of rows, a head).
#pragma once

#include <functional>

namespace lkv {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads total, including the caller; <= 0 = hardware
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  int size() const;
  void run(int n_tasks, const std::function<void(int)>& fn);

 private:
  struct Impl;
  Impl* impl_;
};

}  // namespace lkv
