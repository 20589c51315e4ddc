// Operations the runtime calls: the active ISA's kernels, split over the thread pool by output
// rows, with the float epilogues and the small float ops of a transformer layer.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ternary.h"

namespace ternary {
namespace {

// Chunk starts: multiples of the widest row group of any ISA (a TL2 tile is 32 rows).
constexpr int64_t kRowAlign = 32;

// Rows [n0, n1) of an N-row matrix; acc has row stride ldc.
void ternary_rows(const KernelTable& kt, Format fmt, const uint8_t* packed, int64_t K, int64_t N,
                  int64_t n0, int64_t n1, const int8_t* q, int64_t M, int32_t* acc, int64_t ldc) {
    if (fmt == Format::TL2) return kt.ternary_tl2(packed, K, N, n0, n1, q, K, M, acc, ldc);
    if (fmt == Format::TL1) return kt.ternary_tl1(packed, K, n0, n1, q, K, M, acc, ldc);  // ldc = N
    (fmt == Format::T2 ? kt.ternary_t2 : kt.ternary_t1)(packed, K, n0, n1, q, K, M, acc, ldc);
}

}  // namespace

// One chunk per thread for the lookup layouts: each call builds the tables of all M tokens over
// all K, so 4 chunks per thread built them 4 times (measured, 2560 x 6912 at 2 threads: TL2
// scaled 1.4x over 1 thread where T2 scales 2.0x).
static int chunks_per_thread(Format fmt) { return fmt == Format::TL1 || fmt == Format::TL2 ? 1 : 4; }

void ternary_matmul_i32(Format fmt, const uint8_t* packed, int64_t N, int64_t K, const int8_t* q,
                        int64_t M, int32_t* acc) {
    const KernelTable& kt = active_kernels();
    parallel_rows(N, kRowAlign, std::max<int64_t>(1, K * M / 8), [&](int64_t n0, int64_t n1) {
        ternary_rows(kt, fmt, packed, K, N, n0, n1, q, M, acc, N);
    }, chunks_per_thread(fmt));
}

namespace {

// Runs fn(i, n0, n1) over rows [n0, n1) of matrix i, for nproj matrices of rows(i) rows split
// over the pool as if concatenated (a chunk may span matrices).
template <typename Rows, typename Fn>
void parallel_rows_fused(int nproj, Rows&& rows, int64_t cost_per_row, Fn&& fn, int chunks_per_thread = 4) {
    int64_t total = 0;
    for (int i = 0; i < nproj; ++i) total += rows(i);
    parallel_rows(total, kRowAlign, cost_per_row, [&](int64_t n0, int64_t n1) {
        int64_t first = 0;
        for (int i = 0; i < nproj && first < n1; first += rows(i), ++i) {
            const int64_t a = std::max(n0, first) - first, b = std::min(n1, first + rows(i)) - first;
            if (a < b) fn(i, a, b);
        }
    }, chunks_per_thread);
}

// Columns [n0, n1) of out [M, ldc], which hold int32 accumulators (same size as floats): each
// becomes the float y(a, m, n) in place, while the rows are still in cache.
template <typename Epilogue>
void accumulators_to_floats(float* out, int64_t ldc, int64_t M, int64_t n0, int64_t n1,
                            Epilogue&& y) {
    for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = n0; n < n1; ++n) {
            int32_t a;
            std::memcpy(&a, out + m * ldc + n, sizeof a);
            const float v = y(a, m, n);
            std::memcpy(out + m * ldc + n, &v, sizeof v);
        }
    }
}

// Rows [n0, n1) of one projection: int32 accumulators into `out` itself, then floats.
void ternary_linear_rows(const KernelTable& kt, Format fmt, const TernaryProjection& p, int64_t K,
                         const int8_t* q, const float* act_scale, int64_t M, bool divide,
                         int64_t n0, int64_t n1) {
    int32_t* acc = reinterpret_cast<int32_t*>(p.out);
    ternary_rows(kt, fmt, p.packed, K, p.N, n0, n1, q, M, acc, p.N);
    accumulators_to_floats(p.out, p.N, M, n0, n1, [&](int32_t a, int64_t m, int64_t) {
        return divide ? float(a) / (act_scale[m] * p.weight_scale)
                      : float(a) / act_scale[m] * p.weight_scale;
    });
}

}  // namespace

void ternary_linear_fused(Format fmt, const TernaryProjection* proj, int nproj, int64_t K,
                          const int8_t* q, const float* act_scale, int64_t M, bool divide) {
    const KernelTable& kt = active_kernels();
    const int64_t cost = std::max<int64_t>(1, K * M / 8);
    parallel_rows_fused(nproj, [&](int i) { return proj[i].N; }, cost, [&](int i, int64_t a, int64_t b) {
        ternary_linear_rows(kt, fmt, proj[i], K, q, act_scale, M, divide, a, b);
    }, chunks_per_thread(fmt));
}

void ternary_linear(Format fmt, const uint8_t* packed, int64_t N, int64_t K, const int8_t* q,
                    const float* act_scale, int64_t M, float weight_scale, bool divide,
                    float* out) {
    const TernaryProjection p{packed, N, weight_scale, out};
    ternary_linear_fused(fmt, &p, 1, K, q, act_scale, M, divide);
}

void f16_linear_fused(const uint16_t* const* w, const int64_t* N, int nproj, int64_t K,
                      const float* x, int64_t M, float* const* out) {
    const KernelTable& kt = active_kernels();
    const int64_t cost = std::max<int64_t>(1, K * M);
    parallel_rows_fused(nproj, [&](int i) { return N[i]; }, cost, [&](int i, int64_t a, int64_t b) {
        kt.f16_rows(w[i], K, a, b, x, M, out[i], N[i]);
    });
}

void f16_linear(const uint16_t* w, int64_t N, int64_t K, const float* x, int64_t M, float* out) {
    f16_linear_fused(&w, &N, 1, K, x, M, &out);
}

void int8_linear(const int8_t* w, const float* row_scale, int64_t N, int64_t K, const float* x,
                 int64_t M, float* out) {
    const KernelTable& kt = active_kernels();
    parallel_rows(N, kRowAlign, std::max<int64_t>(1, K * M / 2), [&](int64_t n0, int64_t n1) {
        kt.int8_rows(w, row_scale, K, n0, n1, x, M, out, N);
    });
}

void q4_linear(const uint8_t* packed, const int16_t* sub, const float* row_scale, int64_t N,
               int64_t K, const float* x, int64_t M, float* out) {
    const KernelTable& kt = active_kernels();
    const int64_t G = (K + kQ4Group - 1) / kQ4Group, Kp = G * kQ4Group;
    // Tokens quantized as the ternary linears' (absmax per token), zero-padded to whole groups,
    // with their per-group sums (|sum| <= 128 * 128 fits int16) for the kernels' u - 8 offset.
    std::vector<int8_t> q(static_cast<size_t>(M * Kp), 0);
    std::vector<int16_t> qsum(static_cast<size_t>(M * G));
    std::vector<float> act_scale(static_cast<size_t>(M));
    for (int64_t m = 0; m < M; ++m) {
        act_scale[m] = kt.quantize_row(x + m * K, K, q.data() + m * Kp);
        for (int64_t g = 0; g < G; ++g) {
            int32_t sum = 0;
            for (int64_t k = 0; k < kQ4Group; ++k) sum += q[m * Kp + g * kQ4Group + k];
            qsum[m * G + g] = int16_t(sum);
        }
    }
    int32_t* acc = reinterpret_cast<int32_t*>(out);  // int32 accumulators in place, then floats
    parallel_rows(N, kRowAlign, std::max<int64_t>(1, Kp * M / 4), [&](int64_t n0, int64_t n1) {
        kt.q4_rows(packed, sub, Kp, n0, n1, q.data(), qsum.data(), M, acc, N);
        accumulators_to_floats(out, N, M, n0, n1, [&](int32_t a, int64_t m, int64_t n) {
            return float(a) / act_scale[m] * row_scale[n];
        });
    });
}

void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* act_scale) {
    const KernelTable& kt = active_kernels();
    parallel_rows(M, 1, K, [&](int64_t m0, int64_t m1) {
        for (int64_t m = m0; m < m1; ++m) act_scale[m] = kt.quantize_row(x + m * K, K, q + m * K);
    });
}

// RMSNorm as transformers computes it (float32): x * rsqrt(mean(x^2) + eps), then * weight.
// Plain portable code outside the ISA tables, so every ISA quantizes exactly the same floats.
// The sum of squares is in double, in four fixed lanes (k mod 4): the order is part of the
// definition, never left to a vectorizer, and double leaves it no visible effect anyway.
static void rmsnorm_row(const float* x, const float* weight, int64_t K, float eps, float* y) {
    double ss[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t k = 0;
    for (; k + 4 <= K; k += 4)
        for (int i = 0; i < 4; ++i) ss[i] += double(x[k + i]) * double(x[k + i]);
    for (int i = 0; k < K; ++k, ++i) ss[i] += double(x[k]) * double(x[k]);
    const double sum = (ss[0] + ss[1]) + (ss[2] + ss[3]);
    const float inv = 1.f / std::sqrt(float(sum / double(K)) + eps);
    for (k = 0; k < K; ++k) y[k] = weight[k] * (x[k] * inv);
}

void rmsnorm(const float* x, const float* weight, int64_t M, int64_t K, float eps, float* out) {
    parallel_rows(M, 1, K, [&](int64_t m0, int64_t m1) {
        for (int64_t m = m0; m < m1; ++m) rmsnorm_row(x + m * K, weight, K, eps, out + m * K);
    });
}

void rmsnorm_quantize_rows(const float* x, const float* weight, int64_t M, int64_t K, float eps,
                           int8_t* q, float* act_scale) {
    const KernelTable& kt = active_kernels();
    parallel_rows(M, 1, K, [&](int64_t m0, int64_t m1) {
        std::vector<float> y(static_cast<size_t>(K));
        for (int64_t m = m0; m < m1; ++m) {
            rmsnorm_row(x + m * K, weight, K, eps, y.data());
            act_scale[m] = kt.quantize_row(y.data(), K, q + m * K);
        }
    });
}

void rope_neox(float* x, int64_t T, int64_t H, int64_t D, const float* cos, const float* sin) {
    const int64_t half = D / 2;
    parallel_rows(T * H, 1, D, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            const float* c = cos + (r / H) * half;
            const float* s = sin + (r / H) * half;
            float* v = x + r * D;
            for (int64_t i = 0; i < half; ++i) {
                const float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c[i] - x2 * s[i];
                v[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    });
}

namespace {

// One chunk's softmax partial for the g heads of a group: o [g, D], then mx [g], then l [g].
struct AttnPartial {
    int64_t g, D;
    int64_t floats() const { return g * (D + 2); }
    float* o(float* p) const { return p; }
    float* mx(float* p) const { return p + g * D; }
    float* l(float* p) const { return p + g * D + g; }
};

// out [g, D] = softmax-weighted values of chunks 0..nch-1 merged in chunk order (the same
// arithmetic however the chunks were scheduled): weights e^(mx_c - M) / sum_c l_c e^(mx_c - M).
void merge_attention_chunks(const AttnPartial& pl, float* parts, int64_t nch, float* out) {
    const int64_t stride = pl.floats();
    for (int64_t h = 0; h < pl.g; ++h) {
        float m = -INFINITY;
        for (int64_t c = 0; c < nch; ++c) m = std::max(m, pl.mx(parts + c * stride)[h]);
        float sum = 0.f;
        for (int64_t c = 0; c < nch; ++c) {
            float* pc = parts + c * stride;
            pl.mx(pc)[h] = std::exp(pl.mx(pc)[h] - m);  // now the chunk's rescale factor
            sum += pl.l(pc)[h] * pl.mx(pc)[h];
        }
        float* oh = out + h * pl.D;
        std::fill(oh, oh + pl.D, 0.f);
        for (int64_t c = 0; c < nch; ++c) {
            float* pc = parts + c * stride;
            const float w = pl.mx(pc)[h] / sum;
            const float* oc = pl.o(pc) + h * pl.D;
            for (int64_t d = 0; d < pl.D; ++d) oh[d] += w * oc[d];
        }
    }
}

// Below this many (token, kv head) pairs, attention also splits each key range over tasks
// (decode: a handful of kv heads, thousands of keys); the choice depends on the shapes only.
constexpr int64_t kAttnSplitBelow = 32;

}  // namespace

// Causal attention in chunks of kAttnChunkKeys keys (flash-decoding style): each (token, kv
// head, chunk) yields a softmax partial for the whole GQA group, so the group's query heads
// read each key and value row once, and partials merge in chunk order. Chunk boundaries are
// fixed, so results are identical for every thread count.
void attention(const float* q, int64_t T, int64_t Hq, int64_t D, const float* k_cache,
               const float* v_cache, int64_t Hkv, int64_t C, int64_t pos0, float* out) {
    attention_kv(q, T, Hq, D, KvCacheView{KvType::F32, k_cache, v_cache}, Hkv, C, pos0, out);
}

void attention_kv(const float* q, int64_t T, int64_t Hq, int64_t D, const KvCacheView& kv,
                  int64_t Hkv, int64_t C, int64_t pos0, float* out) {
    const KernelTable& kt = active_kernels();
    const int64_t g = Hq / Hkv;
    const float scale = 1.f / std::sqrt(float(D));
    const AttnPartial pl{g, D};
    const int64_t max_chunks = (pos0 + T + kAttnChunkKeys - 1) / kAttnChunkKeys;
    // Work of one task in multiply-adds (q.k and p.v per key, head and dim).
    const int64_t chunk_cost = std::min<int64_t>(kAttnChunkKeys, pos0 + T) * g * D;
    // Partial of (token t, kv head h, chunk c) into part.
    auto run_chunk = [&](int64_t t, int64_t h, int64_t c, float* part) {
        const int64_t j0 = c * kAttnChunkKeys, n = std::min<int64_t>(kAttnChunkKeys, pos0 + t + 1 - j0);
        const int64_t row = h * C + j0, off = row * D;
        const float* qh = q + (t * Hq + h * g) * D;
        switch (kv.type) {
            case KvType::F32:
                kt.attention_chunk(qh, g, D, static_cast<const float*>(kv.k) + off,
                                   static_cast<const float*>(kv.v) + off, n, scale, pl.o(part),
                                   pl.mx(part), pl.l(part));
                break;
            case KvType::F16:
                kt.attention_chunk_f16(qh, g, D, static_cast<const uint16_t*>(kv.k) + off,
                                       static_cast<const uint16_t*>(kv.v) + off, n, scale,
                                       pl.o(part), pl.mx(part), pl.l(part));
                break;
            case KvType::I8:
                kt.attention_chunk_i8(qh, g, D, static_cast<const int8_t*>(kv.k) + off, kv.ks + row,
                                      static_cast<const int8_t*>(kv.v) + off, kv.vs + row, n,
                                      scale, pl.o(part), pl.mx(part), pl.l(part));
                break;
        }
    };
    auto chunks_of = [&](int64_t t) { return (pos0 + t + kAttnChunkKeys) / kAttnChunkKeys; };

    if (T * Hkv < kAttnSplitBelow && max_chunks > 1) {
        // Tasks (t, h, c); the partials wait in a per-thread buffer reused across calls.
        thread_local std::vector<float> parts;
        parts.resize(static_cast<size_t>(T * Hkv * max_chunks * pl.floats()));
        float* base = parts.data();
        parallel_rows(T * Hkv * max_chunks, 1, chunk_cost, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
                const int64_t t = r / (Hkv * max_chunks), h = r / max_chunks % Hkv, c = r % max_chunks;
                if (c < chunks_of(t)) run_chunk(t, h, c, base + r * pl.floats());
            }
        });
        parallel_rows(T * Hkv, 1, max_chunks * g * D, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r)
                merge_attention_chunks(pl, base + r * max_chunks * pl.floats(), chunks_of(r / Hkv),
                                       out + (r / Hkv * Hq + r % Hkv * g) * D);
        });
        return;
    }
    // Tasks (t, h), latest token first: causal rows grow with t, so the long ones start early.
    parallel_rows(T * Hkv, 1, (pos0 + T) * g * D, [&](int64_t r0, int64_t r1) {
        thread_local std::vector<float> parts;
        parts.resize(static_cast<size_t>(max_chunks * pl.floats()));
        for (int64_t r = r0; r < r1; ++r) {
            const int64_t t = T - 1 - r / Hkv, h = r % Hkv, nch = chunks_of(t);
            for (int64_t c = 0; c < nch; ++c) run_chunk(t, h, c, parts.data() + c * pl.floats());
            merge_attention_chunks(pl, parts.data(), nch, out + (t * Hq + h * g) * D);
        }
    });
}

}  // namespace ternary
