// One persistent thread pool. Workers spin briefly after a job (decode issues kernels back to
// back, microseconds apart), then sleep on a condition variable so an idle engine burns no CPU.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ternary.h"

namespace ternary {
namespace {

// A job lives on the caller's stack; workers take a reference under the mutex and drop it when
// they run out of tasks, and the caller returns only when every task is done and no worker holds
// the job, so a late worker can never run a task of a finished job.
struct Job {
    void (*task)(void*, int64_t);
    void* ctx;
    int64_t ntasks;
    std::atomic<int64_t> next{0}, done{0};
    std::atomic<int> refs{0};

    void work() {
        int64_t i;
        while ((i = next.fetch_add(1, std::memory_order_relaxed)) < ntasks) {
            task(ctx, i);
            done.fetch_add(1, std::memory_order_release);
        }
    }
};

class Pool {
  public:
    int size() const { return nthreads_; }

    void resize(int n) {
        n = std::max(1, n);
        std::lock_guard<std::mutex> serial(run_mutex_);
        stop_workers();
        nthreads_ = n;
        stop_ = false;
        for (int i = 1; i < n; ++i) workers_.emplace_back([this] { worker_loop(); });
    }

    void run(int64_t ntasks, void (*task)(void*, int64_t), void* ctx) {
        if (ntasks <= 1 || nthreads_ <= 1) {
            for (int64_t i = 0; i < ntasks; ++i) task(ctx, i);
            return;
        }
        std::lock_guard<std::mutex> serial(run_mutex_);  // one job at a time
        Job job;
        job.task = task;
        job.ctx = ctx;
        job.ntasks = ntasks;
        {
            std::lock_guard<std::mutex> lk(mutex_);
            job_ = &job;
            generation_.fetch_add(1, std::memory_order_release);
        }
        cv_.notify_all();
        job.work();
        while (job.done.load(std::memory_order_acquire) < ntasks) std::this_thread::yield();
        {
            std::lock_guard<std::mutex> lk(mutex_);
            job_ = nullptr;
        }
        while (job.refs.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    }

  private:
    void worker_loop() {
        uint64_t seen = generation_.load(std::memory_order_acquire);
        for (;;) {
            // Spin ~50 us for the next job before sleeping: decode calls kernels back to back.
            auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
            while (generation_.load(std::memory_order_acquire) == seen && !stop_.load() &&
                   std::chrono::steady_clock::now() < until) {
            }
            Job* job = nullptr;
            {
                std::unique_lock<std::mutex> lk(mutex_);
                cv_.wait(lk, [&] { return generation_.load() != seen || stop_.load(); });
                if (stop_.load()) return;
                seen = generation_.load();
                job = job_;
                if (job) job->refs.fetch_add(1, std::memory_order_acq_rel);
            }
            if (job) {
                job->work();
                job->refs.fetch_sub(1, std::memory_order_acq_rel);
            }
        }
    }

    void stop_workers() {
        {
            std::lock_guard<std::mutex> lk(mutex_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : workers_) t.join();
        workers_.clear();
    }

    int nthreads_ = 1;
    std::vector<std::thread> workers_;
    std::mutex run_mutex_, mutex_;
    std::condition_variable cv_;
    std::atomic<uint64_t> generation_{0};
    std::atomic<bool> stop_{false};
    Job* job_ = nullptr;
};

Pool& pool() {
    static Pool* p = [] {
        auto* pool = new Pool();  // leaked on purpose: no join at interpreter exit
        pool->resize(physical_cores());
        return pool;
    }();
    return *p;
}

}  // namespace

int physical_cores() {
    // Count distinct (package, core) pairs; SMT siblings share one core and its SIMD units.
    std::set<std::pair<std::string, std::string>> cores;
    unsigned n = std::thread::hardware_concurrency();
    for (unsigned cpu = 0; cpu < n; ++cpu) {
        std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
        std::ifstream pkg(base + "physical_package_id"), core(base + "core_id");
        std::string p, c;
        if (!(pkg >> p) || !(core >> c)) return std::max(1u, n);
        cores.emplace(p, c);
    }
    return cores.empty() ? 1 : int(cores.size());
}

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n); }
void run_tasks(int64_t ntasks, void (*task)(void*, int64_t), void* ctx) {
    pool().run(ntasks, task, ctx);
}

}  // namespace ternary
