// DRAM read bandwidth probe: the yardstick for the memory-bound GEMV kernels. Portable code
// (no ISA flags): 16-byte loads already ask far more of a core than DRAM can deliver.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "dense.h"

namespace ternary {
namespace {

volatile uint64_t g_sink;  // the sums land here, so no read can be optimized away

// Sum of 64-bit words, four independent chains so the adds never limit the loads.
uint64_t read_slice(const uint64_t* p, size_t n) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a += p[i] + p[i + 4];
        b += p[i + 1] + p[i + 5];
        c += p[i + 2] + p[i + 6];
        d += p[i + 3] + p[i + 7];
    }
    for (; i < n; ++i) a += p[i];
    return a + b + c + d;
}

}  // namespace

double stream_read_gbps(size_t nbytes, int threads, int reps) {
    threads = std::max(1, threads);
    reps = std::max(1, reps);
    const size_t words = std::max<size_t>(nbytes / 8, size_t(threads) * 8);
    struct Free {
        void operator()(void* p) const { std::free(p); }
    };
    // 2 MB alignment lets the kernel back the buffer with huge pages, as it may for weights.
    std::unique_ptr<uint64_t, Free> buf(static_cast<uint64_t*>(
        std::aligned_alloc(size_t(1) << 21, (words * 8 + (size_t(1) << 21) - 1) >> 21 << 21)));
    if (!buf) return 0.0;
    for (size_t i = 0; i < words; ++i) buf.get()[i] = i;  // real pages, not the shared zero page

    std::vector<double> gbps;
    std::atomic<uint64_t> total{0};
    for (int rep = 0; rep <= reps; ++rep) {  // rep 0 warms up
        std::atomic<int> ready{0};
        std::atomic<bool> go{false};
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
                const size_t a = words * t / threads, b = words * (t + 1) / threads;
                ready.fetch_add(1);
                while (!go.load(std::memory_order_acquire)) {
                }
                total.fetch_add(read_slice(buf.get() + a, b - a), std::memory_order_relaxed);
            });
        }
        while (ready.load() < threads) {
        }
        const auto t0 = std::chrono::steady_clock::now();
        go.store(true, std::memory_order_release);
        for (auto& th : pool) th.join();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (rep > 0) gbps.push_back(double(words) * 8 / s / 1e9);
    }
    g_sink = total.load();
    std::sort(gbps.begin(), gbps.end());
    return gbps[gbps.size() / 2];
}

}  // namespace ternary
