// AVX2 kernels (only this file gets -mavx2 -mfma -mf16c): ternary T2/T1 matmul by select + add,
// and quantize_row. Layouts: ternary.h. Everything here has internal linkage, so no function
// compiled with these flags can stand in for a portable one at link time.
//
// Multiplication-free core, per 32 weights of a row against 32 int8 activations x:
//   bit masks -> byte masks: broadcast the 64-bit mask, vpshufb byte i/8 to lane i, and with the
//   lane's bit, cmpeq (0x00 / 0xFF)
//   d    = (x ^ minus) & nonzero  -> x (+1), ~x = -x - 1 (-1, never overflows), 0
//   acc  = acc + maddubs(ones, d)  (int16 pair sums: a widening add against ones; flushed to int32
//                                   with madd(ones16) before 127 of them could overflow)
// Each -1 weight leaves the sum one short: every output adds its row's count of -1 weights.
// T1 codes are decoded by compare and subtract (digit 4 first: c >= 81, c >= 162, c -= 81 per
// hit, and so on down), no multiplication; GEMV sums plus and minus parts separately.
// GEMV (M < kGemmMinTokens): masks expanded per token. GEMM: a tile of 2 rows is expanded once
// into byte masks (minus, nonzero), then every token costs xor, and, maddubs, add per 32 weights.
// K not a multiple of 64: the last plane's activations are copied into a zero-padded buffer, so
// q is never read past K.
#include <immintrin.h>

#include <cstdlib>
#include <cstring>

#include "dense.h"
#include "quantize_tail.h"
#include "ternary.h"
#include "tl2.h"

namespace ternary {
namespace {

constexpr int64_t kGemmMinTokens = 2;
constexpr int kRows = 2;         // rows per pass (GEMV and GEMM tiles): 16 ymm registers
constexpr int kTokens = 4;       // tokens per GEMM tile: 2x4 accumulators + 4 mask vectors
constexpr int64_t kFlushPlanes = 32;  // GEMM: 2 int16 adds of |x| <= 256 per plane: 64 < 127

// Shuffle indices that put byte (4h + i/8) of a broadcast qword into lane i (h = 32-weight half).
alignas(32) constexpr int8_t kExpandIdx[2][32] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7}};
alignas(32) constexpr uint8_t kBitSel[32] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128,
                                             1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};

struct Expander {
    __m256i idx0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kExpandIdx[0]));
    __m256i idx1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kExpandIdx[1]));
    __m256i bits = _mm256_load_si256(reinterpret_cast<const __m256i*>(kBitSel));
    // Byte masks of weights 32h .. 32h+31 of a plane from its 64-bit mask (broadcast).
    inline __m256i half(__m256i bcast, int h) const {
        const __m256i s = _mm256_shuffle_epi8(bcast, h ? idx1 : idx0);
        return _mm256_cmpeq_epi8(_mm256_and_si256(s, bits), bits);
    }
};

inline uint64_t load_u64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline __m256i loadu(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

inline int32_t hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

// int16 pair sums -> int32 accumulator.
inline __m256i flush16(__m256i acc32, __m256i acc16) {
    return _mm256_add_epi32(acc32, _mm256_madd_epi16(acc16, _mm256_set1_epi16(1)));
}

// Count of -1 weights of a T2 row (padding bits are zero; a +1 bit wins over a -1 bit, as in
// the reference, for bytes the packer never writes).
inline int32_t t2_minus_count(const uint8_t* w, size_t rb) {
    int32_t c = 0;
    for (size_t b = 0; b < rb; b += kT2BlockBytes)
        for (int s = 0; s < 4; ++s) c += int32_t(_mm_popcnt_u64(load_u64(w + b + 32 + 8 * s) & ~load_u64(w + b + 8 * s)));
    return c;
}

// T1: 32 codes -> per digit i, g1[i] = (digit >= 1) i.e. w >= 0, g2[i] = (digit == 2) i.e. w = +1,
// as 0x00 / 0xFF bytes. Works on c - 128 so signed compares order the codes; bytes 243..255 (never
// written by the packer) decode like the reference, as c - 243.
inline void t1_decode(__m256i codes, __m256i* g1, __m256i* g2) {
    __m256i cs = _mm256_xor_si256(codes, _mm256_set1_epi8(char(0x80)));
    cs = _mm256_add_epi8(cs, _mm256_and_si256(_mm256_cmpgt_epi8(cs, _mm256_set1_epi8(114)),
                                              _mm256_set1_epi8(13)));
    int t = 81;
    for (int i = 4; i >= 1; --i, t /= 3) {
        g1[i] = _mm256_cmpgt_epi8(cs, _mm256_set1_epi8(char(t - 1 - 128)));
        g2[i] = _mm256_cmpgt_epi8(cs, _mm256_set1_epi8(char(2 * t - 1 - 128)));
        cs = _mm256_sub_epi8(cs, _mm256_and_si256(g1[i], _mm256_set1_epi8(char(t))));
        cs = _mm256_sub_epi8(cs, _mm256_and_si256(g2[i], _mm256_set1_epi8(char(t))));
    }
    g1[0] = _mm256_cmpgt_epi8(cs, _mm256_set1_epi8(-128));
    g2[0] = _mm256_cmpgt_epi8(cs, _mm256_set1_epi8(-127));
}

// ---------------------------------------------------------------------------------------------
// GEMV path: rows n .. n+R-1, every token m < M (tokens inside, so the rows' weights stay in L1).
// A token without -128 (quantize_rows never makes one) selects -x for a -1 weight, which cannot
// overflow, and needs no -1 count; a token with -128 takes ~x and adds the rows' -1 counts.

inline bool has_int8_min(const int8_t* a, int64_t K) {
    const __m256i lowest = _mm256_set1_epi8(-128);
    int64_t k = 0;
    for (; k + 32 <= K; k += 32)
        if (_mm256_movemask_epi8(_mm256_cmpeq_epi8(loadu(a + k), lowest))) return true;
    for (; k < K; ++k)
        if (a[k] == -128) return true;
    return false;
}

template <int R>
__attribute__((noinline)) void t2_gemv_rows(const uint8_t* packed, size_t rb, int64_t K, int64_t n,
                                            const int8_t* q, int64_t ldq, int64_t M, const bool* exact,
                                            int32_t* acc, int64_t ldc) {
    const int64_t planes = (K + 63) / 64;
    const uint8_t* w[R];
    int32_t corr[R] = {};
    bool counted = false;
    for (int r = 0; r < R; ++r) w[r] = packed + (n + r) * int64_t(rb);
    const Expander ex;
    const __m256i ones = _mm256_set1_epi8(1), zero = _mm256_setzero_si256();
    alignas(32) int8_t tail[64];
    for (int64_t m = 0; m < M; ++m) {
        const int8_t* a = q + m * ldq;
        if (exact[m] && !counted) {
            for (int r = 0; r < R; ++r) corr[r] = t2_minus_count(w[r], rb);
            counted = true;
        }
        __m256i s32[R], s16[R];
        for (int r = 0; r < R; ++r) s32[r] = s16[r] = _mm256_setzero_si256();
        for (int64_t p = 0; p < planes; ++p) {
            const int8_t* src = a + 64 * p;
            if (64 * (p + 1) > K) {
                std::memset(tail, 0, sizeof tail);
                std::memcpy(tail, src, size_t(K - 64 * p));
                src = tail;
            }
            if (p % 4 == 0)  // the block two passes on, into L2 (short interleaved row streams)
                for (int r = 0; r < R; ++r)
                    _mm_prefetch(reinterpret_cast<const char*>(w[r] + (p / 4) * kT2BlockBytes + 2 * R * rb), _MM_HINT_T1);
            const __m256i x[2] = {loadu(src), loadu(src + 32)};
            // -1 weights take -x, or ~x = x ^ minus (and the -1 count) if the token holds -128.
            const __m256i nx[2] = {_mm256_sub_epi8(zero, x[0]), _mm256_sub_epi8(zero, x[1])};
            for (int r = 0; r < R; ++r) {
                const uint8_t* blk = w[r] + (p / 4) * kT2BlockBytes + 8 * (p % 4);
                const uint64_t plus = load_u64(blk), minus = load_u64(blk + 32) & ~plus, nonzero = plus | minus;
                const __m256i bm = _mm256_set1_epi64x(int64_t(minus));
                const __m256i bz = _mm256_set1_epi64x(int64_t(nonzero));
                for (int h = 0; h < 2; ++h) {
                    const __m256i mi = ex.half(bm, h);
                    const __m256i sel = exact[m] ? _mm256_xor_si256(x[h], mi) : _mm256_blendv_epi8(x[h], nx[h], mi);
                    const __m256i d = _mm256_and_si256(sel, ex.half(bz, h));
                    s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(ones, d));
                }
            }
            if ((p & 15) == 15) {  // 32 int16 adds of |x| <= 256 so far
                for (int r = 0; r < R; ++r) {
                    s32[r] = flush16(s32[r], s16[r]);
                    s16[r] = _mm256_setzero_si256();
                }
            }
        }
        for (int r = 0; r < R; ++r)
            acc[m * ldc + n + r] = hsum(flush16(s32[r], s16[r])) + (exact[m] ? corr[r] : 0);
    }
}

template <int R>
__attribute__((noinline)) void t1_gemv_rows(const uint8_t* packed, size_t rb, int64_t K, int64_t n,
                                            const int8_t* q, int64_t ldq, int64_t M, const bool* exact,
                                            int32_t* acc, int64_t ldc) {
    const int64_t nblocks = (K + kT1BlockWeights - 1) / kT1BlockWeights;
    const uint8_t* w[R];
    for (int r = 0; r < R; ++r) w[r] = packed + (n + r) * int64_t(rb);
    const __m256i ones = _mm256_set1_epi8(1), zero = _mm256_setzero_si256();
    alignas(32) int8_t tail[kT1BlockWeights];
    for (int64_t m = 0; m < M; ++m) {
        const int8_t* a = q + m * ldq;
        __m256i s32[R];
        for (int r = 0; r < R; ++r) s32[r] = _mm256_setzero_si256();
        for (int64_t b = 0; b < nblocks; ++b) {
            const int8_t* ab = a + b * kT1BlockWeights;
            if (kT1BlockWeights * (b + 1) > K) {
                std::memset(tail, 0, sizeof tail);
                std::memcpy(tail, ab, size_t(K - kT1BlockWeights * b));
                ab = tail;
            }
            for (int r = 0; r < R; ++r) {
                // Per block: 20 int16 terms of |x| <= 256 at most, then flushed.
                __m256i s16 = _mm256_setzero_si256();
                for (int h = 0; h < 2; ++h) {
                    __m256i g1[5], g2[5];
                    t1_decode(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + b * kT1BlockBytes + 32 * h)), g1, g2);
                    for (int i = 0; i < 5; ++i) {
                        const __m256i x = loadu(ab + 64 * i + 32 * h);
                        const __m256i plus = _mm256_and_si256(x, g2[i]);  // w = +1: x, w = 0: 0
                        if (exact[m]) {  // -x could overflow: add plus, subtract minus
                            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(ones, plus));
                            s16 = _mm256_sub_epi16(s16, _mm256_maddubs_epi16(ones, _mm256_andnot_si256(g1[i], x)));
                        } else {  // w = -1 (not g1): -x
                            const __m256i d = _mm256_blendv_epi8(_mm256_sub_epi8(zero, x), plus, g1[i]);
                            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(ones, d));
                        }
                    }
                }
                s32[r] = flush16(s32[r], s16);
            }
        }
        for (int r = 0; r < R; ++r) acc[m * ldc + n + r] = hsum(s32[r]);
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM path: a tile of R rows expanded to byte masks, reused by every token.

// Thread-local scratch, 64-byte aligned; grows, never shrinks.
struct Scratch {
    void* p = nullptr;
    size_t size = 0;
    ~Scratch() { std::free(p); }
    void* get(size_t bytes) {
        if (bytes > size) {
            std::free(p);
            size = (bytes + 4095) / 4096 * 4096;
            p = std::aligned_alloc(64, size);
            if (!p) std::abort();
        }
        return p;
    }
};

// e: [planes][R][2 halves][minus, nonzero] vectors; corr[r]: the row's -1 count.
inline size_t expanded_index(int64_t p, int R, int r, int h) { return size_t(((p * R + r) * 2 + h) * 2); }

template <int R>
void t2_expand(const uint8_t* packed, size_t rb, int64_t planes, int64_t n, __m256i* e, int32_t* corr) {
    const Expander ex;
    for (int r = 0; r < R; ++r) {
        const uint8_t* w = packed + (n + r) * int64_t(rb);
        corr[r] = t2_minus_count(w, rb);
        for (int64_t p = 0; p < planes; ++p) {
            const uint8_t* blk = w + (p / 4) * kT2BlockBytes + 8 * (p % 4);
            const uint64_t plus = load_u64(blk), minus = load_u64(blk + 32) & ~plus, nonzero = plus | minus;
            const __m256i bm = _mm256_set1_epi64x(int64_t(minus)), bz = _mm256_set1_epi64x(int64_t(nonzero));
            for (int h = 0; h < 2; ++h) {
                e[expanded_index(p, R, r, h)] = ex.half(bm, h);
                e[expanded_index(p, R, r, h) + 1] = ex.half(bz, h);
            }
        }
    }
}

template <int R>
void t1_expand(const uint8_t* packed, size_t rb, int64_t planes, int64_t n, __m256i* e, int32_t* corr) {
    const int64_t nblocks = (planes + 4) / 5;
    const __m256i all = _mm256_set1_epi8(-1);
    for (int r = 0; r < R; ++r) {
        const uint8_t* w = packed + (n + r) * int64_t(rb);
        int32_t c = 0;
        for (int64_t b = 0; b < nblocks; ++b) {
            for (int h = 0; h < 2; ++h) {
                __m256i g1[5], g2[5];
                t1_decode(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * kT1BlockBytes + 32 * h)), g1, g2);
                for (int i = 0; i < 5; ++i) {
                    const __m256i minus = _mm256_xor_si256(g1[i], all);
                    // Padding codes are weight 0, so counting whole blocks is exact.
                    c += int32_t(_mm_popcnt_u32(uint32_t(_mm256_movemask_epi8(minus))));
                    const int64_t p = 5 * b + i;
                    if (p >= planes) continue;
                    e[expanded_index(p, R, r, h)] = minus;
                    e[expanded_index(p, R, r, h) + 1] = _mm256_or_si256(minus, g2[i]);
                }
            }
        }
        corr[r] = c;
    }
}

// acc rows n..n+R-1 for tokens m0..m0+T-1 from the expanded tile e. tail: [T][64] zero-padded
// copies of the tokens' last plane.
template <int R, int T>
__attribute__((noinline)) void gemm_tile(const __m256i* e, int64_t planes, const int8_t* q,
                                         int64_t ldq, const int8_t* tail, const int32_t* corr,
                                         int32_t* out, int64_t ldc) {
    const __m256i ones = _mm256_set1_epi8(1);
    __m256i s16[T][R], s32[T][R];
    for (int t = 0; t < T; ++t)
        for (int r = 0; r < R; ++r) s16[t][r] = s32[t][r] = _mm256_setzero_si256();
    for (int64_t p = 0; p < planes; ++p) {
        for (int h = 0; h < 2; ++h) {
            __m256i mi[R], nz[R];
            for (int r = 0; r < R; ++r) {
                mi[r] = _mm256_load_si256(e + expanded_index(p, R, r, h));
                nz[r] = _mm256_load_si256(e + expanded_index(p, R, r, h) + 1);
            }
            for (int t = 0; t < T; ++t) {
                const int8_t* a = p + 1 < planes ? q + t * ldq + 64 * p : tail + 64 * t;
                const __m256i x = loadu(a + 32 * h);
                for (int r = 0; r < R; ++r) {
                    const __m256i d = _mm256_and_si256(_mm256_xor_si256(x, mi[r]), nz[r]);
                    s16[t][r] = _mm256_add_epi16(s16[t][r], _mm256_maddubs_epi16(ones, d));
                }
            }
        }
        if (p % kFlushPlanes == kFlushPlanes - 1) {
            for (int t = 0; t < T; ++t)
                for (int r = 0; r < R; ++r) {
                    s32[t][r] = flush16(s32[t][r], s16[t][r]);
                    s16[t][r] = _mm256_setzero_si256();
                }
        }
    }
    for (int t = 0; t < T; ++t)
        for (int r = 0; r < R; ++r) out[t * ldc + r] = hsum(flush16(s32[t][r], s16[t][r])) + corr[r];
}

template <int R, int T>
void gemm_tokens(const __m256i* e, int64_t planes, int64_t K, const int8_t* q, int64_t ldq,
                 const int32_t* corr, int32_t* out, int64_t ldc) {
    alignas(32) int8_t tail[T * 64] = {};
    const int64_t last = 64 * (planes - 1);
    for (int t = 0; t < T; ++t) std::memcpy(tail + 64 * t, q + t * ldq + last, size_t(K - last));
    gemm_tile<R, T>(e, planes, q, ldq, tail, corr, out, ldc);
}

template <int R>
void gemm_rows(const __m256i* e, int64_t planes, int64_t K, const int8_t* q, int64_t ldq, int64_t M,
               const int32_t* corr, int32_t* acc, int64_t ldc) {
    int64_t m = 0;
    for (; m + kTokens <= M; m += kTokens)
        gemm_tokens<R, kTokens>(e, planes, K, q + m * ldq, ldq, corr, acc + m * ldc, ldc);
    switch (M - m) {
        case 3: gemm_tokens<R, 3>(e, planes, K, q + m * ldq, ldq, corr, acc + m * ldc, ldc); break;
        case 2: gemm_tokens<R, 2>(e, planes, K, q + m * ldq, ldq, corr, acc + m * ldc, ldc); break;
        case 1: gemm_tokens<R, 1>(e, planes, K, q + m * ldq, ldq, corr, acc + m * ldc, ldc); break;
        default: break;
    }
}

thread_local Scratch tl_scratch;

template <int R>
void ternary_rows(Format fmt, const uint8_t* packed, size_t rb, int64_t K, int64_t n,
                  const int8_t* q, int64_t ldq, int64_t M, const bool* exact, int32_t* acc, int64_t ldc) {
    if (M < kGemmMinTokens) {
        if (fmt == Format::T2) t2_gemv_rows<R>(packed, rb, K, n, q, ldq, M, exact, acc, ldc);
        else t1_gemv_rows<R>(packed, rb, K, n, q, ldq, M, exact, acc, ldc);
        return;
    }
    const int64_t planes = (K + 63) / 64;
    auto* e = static_cast<__m256i*>(tl_scratch.get(expanded_index(planes, R, 0, 0) * sizeof(__m256i)));
    int32_t corr[R];
    if (fmt == Format::T2) t2_expand<R>(packed, rb, planes, n, e, corr);
    else t1_expand<R>(packed, rb, planes, n, e, corr);
    gemm_rows<R>(e, planes, K, q, ldq, M, corr, acc + n, ldc);
}

void ternary_any(Format fmt, const uint8_t* packed, int64_t K, int64_t n0, int64_t n1,
                 const int8_t* q, int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    const size_t rb = row_bytes(fmt, K);
    bool exact[kGemmMinTokens] = {};
    if (M < kGemmMinTokens)
        for (int64_t m = 0; m < M; ++m) exact[m] = has_int8_min(q + m * ldq, K);
    int64_t n = n0;
    for (; n + kRows <= n1; n += kRows) ternary_rows<kRows>(fmt, packed, rb, K, n, q, ldq, M, exact, acc, ldc);
    if (n < n1) ternary_rows<1>(fmt, packed, rb, K, n, q, ldq, M, exact, acc, ldc);
}

void ternary_t2_avx2(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                     int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    ternary_any(Format::T2, packed, K, n0, n1, q, ldq, M, acc, ldc);
}

void ternary_t1_avx2(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                     int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    ternary_any(Format::T1, packed, K, n0, n1, q, ldq, M, acc, ldc);
}

// ---------------------------------------------------------------------------------------------
// Same operations as quantize_row_ref, 8 lanes at a time (scalar tail with the reference's exact
// expressions; builtins, so no std:: inline compiled with these flags is shared): |x|, max (NaN ignored as std::max does), scale = 127 / max(amax, 1e-5), nearest-even
// rounding of x * scale, clamp (NaN -> -128 like std::max(-128.f, r)).
float quantize_row_avx2(const float* x, int64_t K, int8_t* q) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vmax = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) vmax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + k), abs_mask), vmax);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    float amax = _mm_cvtss_f32(m4);
    amax = absmax_tail(x, k, K, amax);
    const float scale = 127.f / (amax < 1e-5f ? 1e-5f : amax);
    const __m256 vs = _mm256_set1_ps(scale), lo = _mm256_set1_ps(-128.f), hi = _mm256_set1_ps(127.f);
    for (k = 0; k + 8 <= K; k += 8) {
        const __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k), vs),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256i i = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
        const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(w, w));
    }
    quantize_tail(x, k, K, scale, q);
    return scale;
}

}  // namespace

const KernelTable& avx2_kernels() {
    static const KernelTable t = [] {
        KernelTable k = ref_kernels();
        k.name = "avx2";
        add_dense_kernels_avx2(k);  // f16_rows, int8_rows, attention_chunk
        k.ternary_t2 = ternary_t2_avx2;
        k.ternary_t1 = ternary_t1_avx2;
        k.ternary_tl2 = tl2::avx2_kernel();  // tl2_avx2.cpp
        k.ternary_tl1 = ternary_tl1_avx2;  // tl1_avx2.cpp
        k.quantize_row = quantize_row_avx2;
        return k;
    }();
    return t;
}

}  // namespace ternary
