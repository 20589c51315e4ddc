// Dense float kernels written once over a vector type V, instantiated by avx512_dense.cpp (V512)
// and avx2_dense.cpp (V256). Include it only from those files, after defining V in an anonymous
// namespace: every instantiation then has internal linkage and carries its own file's ISA flags,
// so the linker can never hand an AVX-512 copy to an AVX2 caller.
//
// V provides: F (vector of W floats), zero, set1, load, load_tail(p, n) (lanes >= n are 0),
// store, store_tail, load_w / load_w_tail for uint16_t (IEEE half) and int8_t weights, fma, add,
// sub, mul, max, reduce (fixed-order horizontal sum), reduce_max, exp (for x <= 0).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ternary.h"

namespace ternary {
namespace dense {

// ---- weight rows x activations: out[m, n] = sum_k x[m, k] * w[n, k] ----
//
// dot_tile computes an R-row x M-token tile with one vector accumulator per (row, token), k
// ascending in steps of W with one masked tail step, then reduce. Every output element goes
// through the same operations whatever R and M, so a result never depends on the tiling, the
// row range or the thread count, and a token gives the same logits alone (GEMV) or in a batch.
template <class V, class T, int R, int M>
inline void dot_tile(const T* w, int64_t K, const float* x, float* sums /* [R][M] */) {
    using F = typename V::F;
    F acc[R][M];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) acc[r][m] = V::zero();
    int64_t k = 0;
    for (; k + V::W <= K; k += V::W) {
        F wv[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) wv[r] = V::load_w(w + r * K + k);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
            const F xv = V::load(x + m * K + k);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) acc[r][m] = V::fma(wv[r], xv, acc[r][m]);
        }
    }
    if (k < K) {
        const int rest = int(K - k);
        F wv[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) wv[r] = V::load_w_tail(w + r * K + k, rest);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
            const F xv = V::load_tail(x + m * K + k, rest);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) acc[r][m] = V::fma(wv[r], xv, acc[r][m]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) sums[r * M + m] = V::reduce(acc[r][m]);
}

// Rows [n, n + R) x tokens [m0, m0 + M) into out (row stride ldc), times row_scale if given.
template <class V, class T, int R, int M>
inline void rows_tile(const T* w, int64_t K, int64_t n, const float* x, int64_t m0,
                      const float* row_scale, float* out, int64_t ldc) {
    float s[R * M];
    dot_tile<V, T, R, M>(w + n * K, K, x + m0 * K, s);
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m)
            out[(m0 + m) * ldc + n + r] = row_scale ? s[r * M + m] * row_scale[n + r] : s[r * M + m];
}

// Tokens [m0, m0 + mt) for one row group; mt <= V::kTileM picks the instantiation.
template <class V, class T, int R>
inline void rows_tile_m(int mt, const T* w, int64_t K, int64_t n, const float* x, int64_t m0,
                        const float* row_scale, float* out, int64_t ldc) {
    static_assert(V::kTileM <= 6, "add cases below");
    switch (mt) {
        case 1: return rows_tile<V, T, R, 1>(w, K, n, x, m0, row_scale, out, ldc);
        case 2: return rows_tile<V, T, R, 2>(w, K, n, x, m0, row_scale, out, ldc);
        case 3: return rows_tile<V, T, R, 3>(w, K, n, x, m0, row_scale, out, ldc);
        case 4: return rows_tile<V, T, R, (V::kTileM >= 4 ? 4 : 1)>(w, K, n, x, m0, row_scale, out, ldc);
        case 5: return rows_tile<V, T, R, (V::kTileM >= 5 ? 5 : 1)>(w, K, n, x, m0, row_scale, out, ldc);
        case 6: return rows_tile<V, T, R, (V::kTileM >= 6 ? 6 : 1)>(w, K, n, x, m0, row_scale, out, ldc);
    }
}

// out[m, n] (row stride ldc) = sum_k x[m, k] * w[n, k] (* row_scale[n]) for n in [n0, n1).
//
// GEMV (M == 1) is memory-bound: V::kGemvRows rows stream side by side, one accumulator each,
// enough independent FMA chains to cover the latency and enough read streams to keep the
// memory system busy. GEMM is compute-bound: a panel of kPanelRows rows stays in L2 while
// tiles of V::kTileR rows x V::kTileM tokens sweep it, so each converted weight vector feeds
// kTileM FMAs and each activation vector kTileR FMAs.
template <class V, class T>
void weight_rows(const T* w, const float* row_scale, int64_t K, int64_t n0, int64_t n1,
                 const float* x, int64_t M, float* out, int64_t ldc) {
    constexpr int GR = V::kGemvRows, TR = V::kTileR, TM = V::kTileM;
    if (M == 1) {
        int64_t n = n0;
        for (; n + GR <= n1; n += GR) rows_tile<V, T, GR, 1>(w, K, n, x, 0, row_scale, out, ldc);
        for (; n < n1; ++n) rows_tile<V, T, 1, 1>(w, K, n, x, 0, row_scale, out, ldc);
        return;
    }
    constexpr int64_t kPanelRows = 16;
    for (int64_t p0 = n0; p0 < n1; p0 += kPanelRows) {
        const int64_t p1 = std::min(n1, p0 + kPanelRows);
        for (int64_t m0 = 0; m0 < M; m0 += TM) {
            const int mt = int(std::min<int64_t>(TM, M - m0));
            int64_t n = p0;
            for (; n + TR <= p1; n += TR) rows_tile_m<V, T, TR>(mt, w, K, n, x, m0, row_scale, out, ldc);
            for (; n < p1; ++n) rows_tile_m<V, T, 1>(mt, w, K, n, x, m0, row_scale, out, ldc);
        }
    }
}

template <class V>
void f16_rows(const uint16_t* w, int64_t K, int64_t n0, int64_t n1, const float* x, int64_t M,
              float* out, int64_t ldc) {
    weight_rows<V, uint16_t>(w, nullptr, K, n0, n1, x, M, out, ldc);
}

template <class V>
void int8_rows(const int8_t* w, const float* row_scale, int64_t K, int64_t n0, int64_t n1,
               const float* x, int64_t M, float* out, int64_t ldc) {
    weight_rows<V, int8_t>(w, row_scale, K, n0, n1, x, M, out, ldc);
}

// ---- attention chunk (contract in ternary.h, KernelTable::attention_chunk) ----

// Scores of up to 4 heads at once: each key row is loaded once for all of them.
template <class V, int H>
inline void attention_scores(const float* q, int64_t D, const float* k, int64_t n, float scale,
                             float* s /* [H][kAttnChunkKeys] */) {
    using F = typename V::F;
    for (int64_t j = 0; j < n; ++j) {
        const float* kj = k + j * D;
        F acc[H];
#pragma GCC unroll 4
        for (int h = 0; h < H; ++h) acc[h] = V::zero();
        int64_t d = 0;
        for (; d + V::W <= D; d += V::W) {
            const F kv = V::load(kj + d);
#pragma GCC unroll 4
            for (int h = 0; h < H; ++h) acc[h] = V::fma(V::load(q + h * D + d), kv, acc[h]);
        }
        if (d < D) {
            const int rest = int(D - d);
            const F kv = V::load_tail(kj + d, rest);
#pragma GCC unroll 4
            for (int h = 0; h < H; ++h) acc[h] = V::fma(V::load_tail(q + h * D + d, rest), kv, acc[h]);
        }
#pragma GCC unroll 4
        for (int h = 0; h < H; ++h) s[h * kAttnChunkKeys + j] = V::reduce(acc[h]) * scale;
    }
}

// In place: p = e^(s - max s) over n scores; returns (max, sum p) through mx, l.
template <class V>
inline void softmax_partial(float* p, int64_t n, float* mx, float* l) {
    using F = typename V::F;
    F vmax = V::set1(-INFINITY);
    int64_t j = 0;
    for (; j + V::W <= n; j += V::W) vmax = V::max(vmax, V::load(p + j));
    float m = V::reduce_max(vmax);
    for (; j < n; ++j) m = std::max(m, p[j]);
    const F vm = V::set1(m);
    F sum = V::zero();
    j = 0;
    for (; j + V::W <= n; j += V::W) {
        const F e = V::exp(V::sub(V::load(p + j), vm));
        V::store(p + j, e);
        sum = V::add(sum, e);
    }
    if (j < n) {
        const int rest = int(n - j);
        const F e = V::exp(V::sub(V::load_tail(p + j, rest), vm));
        V::store_tail(p + j, e, rest);
        // lanes past n hold e^(0 - m); keep them out of the sum
        sum = V::add(sum, V::load_tail(p + j, rest));
    }
    *mx = m;
    *l = V::reduce(sum);
}

// o[h, :] += sum_i p[h][i] * v[i, :] for KJ keys and H heads: each V row is read once for all
// H heads, and each load/store of an output vector carries KJ FMAs.
template <class V, int H, int KJ>
inline void attention_values_keys(const float* p /* [H][kAttnChunkKeys] */, const float* v,
                                  int64_t D, float* o /* [H, D] */) {
    using F = typename V::F;
    int64_t d = 0;
    for (; d + V::W <= D; d += V::W) {
        F vv[KJ];
#pragma GCC unroll 4
        for (int i = 0; i < KJ; ++i) vv[i] = V::load(v + i * D + d);
#pragma GCC unroll 4
        for (int h = 0; h < H; ++h) {
            F acc = V::load(o + h * D + d);
#pragma GCC unroll 4
            for (int i = 0; i < KJ; ++i) acc = V::fma(V::set1(p[h * kAttnChunkKeys + i]), vv[i], acc);
            V::store(o + h * D + d, acc);
        }
    }
    if (d < D) {
        const int rest = int(D - d);
        F vv[KJ];
#pragma GCC unroll 4
        for (int i = 0; i < KJ; ++i) vv[i] = V::load_tail(v + i * D + d, rest);
#pragma GCC unroll 4
        for (int h = 0; h < H; ++h) {
            F acc = V::load_tail(o + h * D + d, rest);
#pragma GCC unroll 4
            for (int i = 0; i < KJ; ++i) acc = V::fma(V::set1(p[h * kAttnChunkKeys + i]), vv[i], acc);
            V::store_tail(o + h * D + d, acc, rest);
        }
    }
}

template <class V, int H>
inline void attention_values(const float* p, const float* v, int64_t D, int64_t n, float* o) {
    std::fill(o, o + H * D, 0.f);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) attention_values_keys<V, H, 4>(p + j, v + j * D, D, o);
    for (; j < n; ++j) attention_values_keys<V, H, 1>(p + j, v + j * D, D, o);
}

template <class V, int H>
inline void attention_heads(const float* q, int64_t D, const float* k, const float* v, int64_t n,
                            float scale, float* o, float* mx, float* l) {
    alignas(64) float s[H * kAttnChunkKeys];
    attention_scores<V, H>(q, D, k, n, scale, s);
    for (int h = 0; h < H; ++h) softmax_partial<V>(s + h * kAttnChunkKeys, n, mx + h, l + h);
    attention_values<V, H>(s, v, D, n, o);
}

template <class V>
void attention_chunk(const float* q, int64_t g, int64_t D, const float* k, const float* v,
                     int64_t n, float scale, float* o, float* mx, float* l) {
    int64_t h = 0;
    for (; h + 4 <= g; h += 4) attention_heads<V, 4>(q + h * D, D, k, v, n, scale, o + h * D, mx + h, l + h);
    switch (g - h) {
        case 3: attention_heads<V, 3>(q + h * D, D, k, v, n, scale, o + h * D, mx + h, l + h); break;
        case 2: attention_heads<V, 2>(q + h * D, D, k, v, n, scale, o + h * D, mx + h, l + h); break;
        case 1: attention_heads<V, 1>(q + h * D, D, k, v, n, scale, o + h * D, mx + h, l + h); break;
    }
}

}  // namespace dense
}  // namespace ternary
