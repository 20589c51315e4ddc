// Template part of the thread pool API in ternary.h (kept out of the way of the declarations).
#pragma once
#include <algorithm>

namespace ternary {

// Runs task(ctx, i) for i in [0, ntasks) on the pool (the caller takes part) and returns when
// all are done. Task i is always the same row range, whichever thread runs it.
void run_tasks(int64_t ntasks, void (*task)(void* ctx, int64_t i), void* ctx);

// Below this much work (rows x cost) a call stays on the calling thread: waking the pool costs
// a few microseconds, more than a small GEMV takes.
constexpr int64_t kParallelMinWork = 1 << 16;

template <typename Fn>
void parallel_rows(int64_t n, int64_t align, int64_t cost_per_row, Fn&& fn, int chunks_per_thread) {
    if (n <= 0) return;
    const int nt = num_threads();
    if (nt <= 1 || n * cost_per_row < kParallelMinWork || n <= align) {
        fn(int64_t(0), n);
        return;
    }
    // chunk starts stay aligned
    int64_t chunks = std::min<int64_t>(int64_t(nt) * chunks_per_thread, (n + align - 1) / align);
    int64_t per = (n + chunks - 1) / chunks;
    per = (per + align - 1) / align * align;
    chunks = (n + per - 1) / per;
    struct Ctx {
        Fn* fn;
        int64_t n, per;
    } ctx{&fn, n, per};
    run_tasks(
        chunks,
        [](void* p, int64_t i) {
            auto* c = static_cast<Ctx*>(p);
            int64_t a = i * c->per, b = std::min(c->n, a + c->per);
            if (a < b) (*c->fn)(a, b);
        },
        &ctx);
}

}  // namespace ternary
