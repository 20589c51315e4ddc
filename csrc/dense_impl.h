// Dense float kernels written once over a vector type V, instantiated by avx512_dense.cpp (V512)
// and avx2_dense.cpp (V256). Include it only from those files, after defining V in an anonymous
// namespace: every instantiation then has internal linkage and carries its own file's ISA flags,
// so the linker can never hand an AVX-512 copy to an AVX2 caller.
//
// V provides: F (vector of W floats), the tile shapes kGemvRows, kTileR, kTileM, and zero, set1,
// load, load_tail(p, n) (lanes >= n are 0), store, store_tail, load_w / load_w_tail for
// uint16_t (IEEE half) and int8_t weights, fma, add, sub, max, reduce (fixed-order horizontal
// sum), reduce_max, exp (for x <= 0). Every function here is a template over V (no plain inline
// function: one compiled with AVX-512 flags could be the copy the linker keeps for both files).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ternary.h"

namespace ternary {
namespace dense {

// ---- weight rows x activations: out[m, n] = sum_k x[m, k] * w[n, k] ----
//
// One vector accumulator per (row, token) collects k ascending in steps of W, the last step
// masked, and one reduce ends it. Every output element goes through the same operations
// whatever the tiling (K blocks are whole vectors, and accumulators parked in memory between
// blocks keep their bits), so a result never depends on the row range, the thread count or the
// batch: a token gives the same logits alone (GEMV) as inside a prefill (GEMM).

// acc[r][m] += w[r, k] * x[m, k] for k in [k0, k1); rows of w and x are K apart. Only the block
// that ends at K may end off a vector boundary. kGemv: prefetch the next block of R rows.
template <class V, class T, int R, int M, bool kGemv = false>
inline void accumulate(const T* w, const float* x, int64_t K, int64_t k0, int64_t k1,
                       typename V::F (&acc_io)[R][M]) {
    using F = typename V::F;
    F acc[R][M];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) acc[r][m] = acc_io[r][m];
    int64_t k = k0;
    // GEMV: the R rows are one contiguous block read as R interleaved streams that restart at
    // every block, too short for the hardware prefetcher to ramp up (about 10 % of DRAM
    // bandwidth lost); so walk the next block linearly into L2, one block ahead, at the rate
    // this one is consumed. Past the last row it prefetches bytes nobody reads: harmless.
    const char* next = reinterpret_cast<const char*>(w + R * K + k0);
    constexpr int kStepBytes = R * V::W * int(sizeof(T));
    for (; k + V::W <= k1; k += V::W) {
        if constexpr (kGemv) {
#pragma GCC unroll 16
            for (int i = 0; i < kStepBytes; i += 64) _mm_prefetch(next + i, _MM_HINT_T1);
            next += kStepBytes;
        }
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
    if (k < k1) {
        const int rest = int(k1 - k);
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
        for (int m = 0; m < M; ++m) acc_io[r][m] = acc[r][m];
}

// out[m0 + m, n + r] = reduce(acc[r][m]) (* row_scale[n + r]).
template <class V, int R, int M>
inline void store_tile(const typename V::F (&acc)[R][M], int64_t n, int64_t m0,
                       const float* row_scale, float* out, int64_t ldc) {
    for (int r = 0; r < R; ++r) {
        for (int m = 0; m < M; ++m) {
            const float s = V::reduce(acc[r][m]);
            out[(m0 + m) * ldc + n + r] = row_scale ? s * row_scale[n + r] : s;
        }
    }
}

// GEMM piece: tiles of R rows starting at row n (ntiles <= NT of them) x tokens [m0, m0 + M),
// over K in blocks of KB: all NT tiles use one block of the M activation rows before the next
// (from L1), and each converted weight vector feeds M FMAs from registers.
template <class V, class T, int R, int NT, int64_t KB, int M>
void panel_tokens(const T* w, int64_t K, int64_t n, int ntiles, const float* x, int64_t m0,
                  const float* row_scale, float* out, int64_t ldc) {
    typename V::F acc[NT][R][M];
    for (int t = 0; t < ntiles; ++t)
        for (int r = 0; r < R; ++r)
            for (int m = 0; m < M; ++m) acc[t][r][m] = V::zero();
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
        const int64_t k1 = std::min(K, k0 + KB);
        for (int t = 0; t < ntiles; ++t)
            accumulate<V, T, R, M>(w + (n + t * R) * K, x + m0 * K, K, k0, k1, acc[t]);
    }
    for (int t = 0; t < ntiles; ++t) store_tile<V, R, M>(acc[t], n + t * R, m0, row_scale, out, ldc);
}

// Rows [n0, n1) x all M tokens in panels of NT tiles of kTileR rows (then single rows); each
// panel's tokens go by kTileM.
template <class V, class T, int NT, int64_t KB>
void gemm_panels(const T* w, const float* row_scale, int64_t K, int64_t n0, int64_t n1,
                 const float* x, int64_t M, float* out, int64_t ldc) {
    constexpr int TR = V::kTileR, TM = V::kTileM;
    static_assert(TM <= 8, "add cases below");
    for (int64_t p0 = n0; p0 < n1; p0 += int64_t(NT) * TR) {
        const int64_t rows = std::min<int64_t>(int64_t(NT) * TR, n1 - p0);
        const int full = int(rows / TR), rest = int(rows % TR);
        for (int64_t m0 = 0; m0 < M; m0 += TM) {
            auto run = [&](auto mt) {
                constexpr int MT = decltype(mt)::value;
                if (full) panel_tokens<V, T, TR, NT, KB, MT>(w, K, p0, full, x, m0, row_scale, out, ldc);
                if (rest) panel_tokens<V, T, 1, TR, KB, MT>(w, K, p0 + full * TR, rest, x, m0, row_scale, out, ldc);
            };
            switch (std::min<int64_t>(TM, M - m0)) {
                case 1: run(std::integral_constant<int, 1>()); break;
                case 2: run(std::integral_constant<int, 2>()); break;
                case 3: run(std::integral_constant<int, 3>()); break;
                case 4: run(std::integral_constant<int, std::min(4, TM)>()); break;
                case 5: run(std::integral_constant<int, std::min(5, TM)>()); break;
                case 6: run(std::integral_constant<int, std::min(6, TM)>()); break;
                case 7: run(std::integral_constant<int, std::min(7, TM)>()); break;
                case 8: run(std::integral_constant<int, std::min(8, TM)>()); break;
            }
        }
    }
}

// out[m, n] (row stride ldc) = sum_k x[m, k] * w[n, k] (* row_scale[n]) for n in [n0, n1).
//
// GEMV (M == 1) is memory-bound: V::kGemvRows rows stream side by side, one accumulator each:
// enough independent FMA chains to cover the latency and enough read streams to keep the
// memory system busy. GEMM is compute-bound, register tiles of kTileR rows x kTileM tokens.
// While all M activation rows fit in L2/L3 comfortably, each tile runs the whole K in one go
// over a small panel of rows; beyond that (long prompts x wide K) activations would stream from
// DRAM once per small panel, so panels grow to 16 tiles and K goes in blocks that stay in L1.
template <class V, class T>
void weight_rows(const T* w, const float* row_scale, int64_t K, int64_t n0, int64_t n1,
                 const float* x, int64_t M, float* out, int64_t ldc) {
    using F = typename V::F;
    constexpr int GR = V::kGemvRows;
    if (M == 1) {
        int64_t n = n0;
        for (; n + GR <= n1; n += GR) {
            F acc[GR][1];
            for (int r = 0; r < GR; ++r) acc[r][0] = V::zero();
            accumulate<V, T, GR, 1, true>(w + n * K, x, K, 0, K, acc);
            store_tile<V, GR, 1>(acc, n, 0, row_scale, out, ldc);
        }
        for (; n < n1; ++n) {
            F acc[1][1] = {{V::zero()}};
            accumulate<V, T, 1, 1, true>(w + n * K, x, K, 0, K, acc);
            store_tile<V, 1, 1>(acc, n, 0, row_scale, out, ldc);
        }
        return;
    }
    constexpr int64_t kWholeK = int64_t(1) << 62;
    if (M * K * int64_t(sizeof(float)) <= (int64_t(4) << 20))
        gemm_panels<V, T, 4, kWholeK>(w, row_scale, K, n0, n1, x, M, out, ldc);
    else
        gemm_panels<V, T, 16, 1024>(w, row_scale, K, n0, n1, x, M, out, ldc);
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
//
// One template over the cache element type T: float, uint16_t (IEEE half) or int8_t (rows with
// one scale each, ks / vs; nullptr for the others). A key row's scale multiplies its score; a
// value row's folds into its softmax weight, so both inner loops are plain FMAs over converted
// rows (vcvtph2ps / vpmovsxbd + vcvtdq2ps), shared by the GQA group's heads.

template <class V, class T>
inline typename V::F load_kv(const T* p) {
    if constexpr (std::is_same_v<T, float>) return V::load(p);
    else return V::load_w(p);
}
template <class V, class T>
inline typename V::F load_kv_tail(const T* p, int n) {
    if constexpr (std::is_same_v<T, float>) return V::load_tail(p, n);
    else return V::load_w_tail(p, n);
}

// Decode reads the KV cache from DRAM as short runs (one chunk of K, then of V): on their own
// the hardware prefetchers reach about half the streaming bandwidth. So each phase fetches the
// next phase's rows into L2 as it goes: the scores fetch V, the weighted sum fetches the
// following chunk's keys (the same head's next chunk: contiguous in the cache). Measured on
// the 2B shape at 4096 positions: 9-10 -> 17-20 GB/s, about the streaming-read figure.
template <class V, class T>
inline void prefetch_l2(const T* p, int64_t elems) {
    for (int64_t b = 0; b < elems * int64_t(sizeof(T)); b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(p) + b, _MM_HINT_T1);
}

// Scores of up to 4 heads at once: each key row is loaded once for all of them.
template <class V, int H, class T>
inline void attention_scores(const float* q, int64_t D, const T* k, const float* ks, const T* v,
                             int64_t n, float scale, float* s /* [H][kAttnChunkKeys] */) {
    using F = typename V::F;
    for (int64_t j = 0; j < n; ++j) {
        const T* kj = k + j * D;
        prefetch_l2<V>(v + j * D, D);
        F acc[H];
#pragma GCC unroll 4
        for (int h = 0; h < H; ++h) acc[h] = V::zero();
        int64_t d = 0;
        for (; d + V::W <= D; d += V::W) {
            const F kv = load_kv<V>(kj + d);
#pragma GCC unroll 4
            for (int h = 0; h < H; ++h) acc[h] = V::fma(V::load(q + h * D + d), kv, acc[h]);
        }
        if (d < D) {
            const int rest = int(D - d);
            const F kv = load_kv_tail<V>(kj + d, rest);
#pragma GCC unroll 4
            for (int h = 0; h < H; ++h) acc[h] = V::fma(V::load_tail(q + h * D + d, rest), kv, acc[h]);
        }
        const float sj = std::is_same_v<T, int8_t> ? scale * ks[j] : scale;
#pragma GCC unroll 4
        for (int h = 0; h < H; ++h) s[h * kAttnChunkKeys + j] = V::reduce(acc[h]) * sj;
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
template <class V, int H, int KJ, class T>
inline void attention_values_keys(const float* p /* [H][kAttnChunkKeys] */, const T* v,
                                  int64_t D, float* o /* [H, D] */) {
    using F = typename V::F;
    int64_t d = 0;
    for (; d + V::W <= D; d += V::W) {
        F vv[KJ];
#pragma GCC unroll 4
        for (int i = 0; i < KJ; ++i) vv[i] = load_kv<V>(v + i * D + d);
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
        for (int i = 0; i < KJ; ++i) vv[i] = load_kv_tail<V>(v + i * D + d, rest);
#pragma GCC unroll 4
        for (int h = 0; h < H; ++h) {
            F acc = V::load_tail(o + h * D + d, rest);
#pragma GCC unroll 4
            for (int i = 0; i < KJ; ++i) acc = V::fma(V::set1(p[h * kAttnChunkKeys + i]), vv[i], acc);
            V::store_tail(o + h * D + d, acc, rest);
        }
    }
}

// next_k: the keys after this chunk's, fetched meanwhile.
template <class V, int H, class T>
inline void attention_values(const float* p, const T* v, int64_t D, int64_t n, float* o,
                             const T* next_k) {
    std::fill(o, o + H * D, 0.f);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        prefetch_l2<V>(next_k + j * D, 4 * D);
        attention_values_keys<V, H, 4>(p + j, v + j * D, D, o);
    }
    for (; j < n; ++j) attention_values_keys<V, H, 1>(p + j, v + j * D, D, o);
}

template <class V, int H, class T>
inline void attention_heads(const float* q, int64_t D, const T* k, const float* ks, const T* v,
                            const float* vs, int64_t n, float scale, float* o, float* mx, float* l) {
    alignas(64) float s[H * kAttnChunkKeys];
    attention_scores<V, H>(q, D, k, ks, v, n, scale, s);
    for (int h = 0; h < H; ++h) softmax_partial<V>(s + h * kAttnChunkKeys, n, mx + h, l + h);
    if constexpr (std::is_same_v<T, int8_t>)  // l keeps the plain weights; o gets p * v scale
        for (int h = 0; h < H; ++h)
            for (int64_t j = 0; j < n; ++j) s[h * kAttnChunkKeys + j] *= vs[j];
    attention_values<V, H>(s, v, D, n, o, k + n * D);
}

template <class V, class T>
void attention_chunk_kv(const float* q, int64_t g, int64_t D, const T* k, const float* ks,
                        const T* v, const float* vs, int64_t n, float scale, float* o, float* mx,
                        float* l) {
    int64_t h = 0;
    for (; h + 4 <= g; h += 4)
        attention_heads<V, 4>(q + h * D, D, k, ks, v, vs, n, scale, o + h * D, mx + h, l + h);
    switch (g - h) {
        case 3: attention_heads<V, 3>(q + h * D, D, k, ks, v, vs, n, scale, o + h * D, mx + h, l + h); break;
        case 2: attention_heads<V, 2>(q + h * D, D, k, ks, v, vs, n, scale, o + h * D, mx + h, l + h); break;
        case 1: attention_heads<V, 1>(q + h * D, D, k, ks, v, vs, n, scale, o + h * D, mx + h, l + h); break;
    }
}

template <class V>
void attention_chunk(const float* q, int64_t g, int64_t D, const float* k, const float* v,
                     int64_t n, float scale, float* o, float* mx, float* l) {
    attention_chunk_kv<V, float>(q, g, D, k, nullptr, v, nullptr, n, scale, o, mx, l);
}

template <class V>
void attention_chunk_f16(const float* q, int64_t g, int64_t D, const uint16_t* k,
                         const uint16_t* v, int64_t n, float scale, float* o, float* mx, float* l) {
    attention_chunk_kv<V, uint16_t>(q, g, D, k, nullptr, v, nullptr, n, scale, o, mx, l);
}

template <class V>
void attention_chunk_i8(const float* q, int64_t g, int64_t D, const int8_t* k, const float* ks,
                        const int8_t* v, const float* vs, int64_t n, float scale, float* o,
                        float* mx, float* l) {
    attention_chunk_kv<V, int8_t>(q, g, D, k, ks, v, vs, n, scale, o, mx, l);
}

}  // namespace dense
}  // namespace ternary
