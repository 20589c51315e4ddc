// AVX-512 kernels (F/BW/VL/VNNI/VBMI; only this file gets those flags): ternary T2/T1 matmul by
// select + add, and quantize_row. Layouts: ternary.h. Everything here has internal linkage, so
// no function compiled with these flags can stand in for a portable one at link time.
//
// Multiplication-free core. A "plane" is 64 consecutive weights of a row, k in [64p, 64p + 64),
// against the 64 int8 activations x of one register:
//   d   = x where w = +1, ~x where w = -1, 0 where w = 0     (masked byte moves / one vpternlogd)
//   acc = vpdpbusd(acc, ones, d)                              (ones x d: a widening add of d's bytes)
// ~x = -x - 1 never overflows (-x does for x = -128), so each -1 weight leaves the sum one short:
// every output adds its row's count of -1 weights (popcount of the minus masks). GEMV tokens
// without -128 (all that quantize_rows makes) select -x instead and need no count.
//
// GEMV (few tokens): k-masks straight from the packed bytes (T2: kmovq; T1: a 256-entry vpermi2b
// table and compares), 4 rows per pass share each activation load, one horizontal sum per row
// and token. Zen 4 makes about one k-mask per cycle: that, not DRAM, bounds a core.
// GEMM (more tokens): a tile of 4 rows is expanded once into byte masks (minus, nonzero), then
// every token costs xor, and, vpdpbusd per plane and row (~2 cycles per 64 weights x token).
// K that is not a multiple of 64: the last plane's activations come from a masked load (q ends at
// K); planes past K hold only padding (zero weights) and are skipped.
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "dense.h"
#include "ternary.h"
#include "tl2.h"

// GCC 12 warns about _mm512_undefined_* inside its own intrinsic headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ternary {
namespace {

// GEMV (masks per token) below these token counts, GEMM (masks expanded once per 4-row tile,
// ~8 cycles per row and plane) from them on: where the measured costs cross.
constexpr int64_t kGemmMinTokensT2 = 6;
constexpr int64_t kGemmMinTokensT1 = 3;
constexpr int64_t kGemvMaxTokens = std::max(kGemmMinTokensT2, kGemmMinTokensT1) - 1;
constexpr int kRows = 4;               // rows per pass (GEMV and GEMM tiles)
constexpr int kTokens = 4;             // tokens per GEMM tile: 4x4 accumulators + 8 mask vectors

inline __mmask64 load_mask(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return _cvtu64_mask64(v);
}

// Mask of the activation bytes of plane p that lie below K.
inline __mmask64 plane_mask(int64_t K, int64_t p) {
    const int64_t left = K - 64 * p;
    return left >= 64 ? _cvtu64_mask64(~0ull) : _cvtu64_mask64(~0ull >> (64 - left));
}

// acc += sums of 4 bytes of d (ones x d). Inline asm: GCC 12 copies the accumulator before and
// after every _mm512_dpbusd_epi32 in a loop.
inline __m512i add_bytes(__m512i acc, __m512i ones, __m512i d) {
    asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(ones), "v"(d));
    return acc;
}

// d = x where w = +1 (kp), ~x where w = -1 (km), else 0. A byte the packer never writes, with
// both bits set, counts as +1 as in the reference.
inline __m512i select(__mmask64 kp, __mmask64 km, __m512i x, __m512i nx) {
    return _mm512_mask_mov_epi8(_mm512_maskz_mov_epi8(km, nx), kp, x);
}

// (x ^ minus) & nonzero, with minus / nonzero as 0x00/0xFF byte masks: x, ~x or 0. Two
// non-destructive ops rather than one vpternlogd, which would overwrite a reused operand.
inline __m512i select_bytes(__m512i x, __m512i minus, __m512i nonzero) {
    return _mm512_and_si512(_mm512_xor_si512(x, minus), nonzero);
}

// Horizontal sums of 4 accumulators -> [sum a, sum b, sum c, sum d].
inline __m128i reduce4(__m512i a, __m512i b, __m512i c, __m512i d) {
    // Pairwise: lanes of a and b interleaved, then c and d, halving the width each step.
    const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    // ab: a0+a2 b0+b2 a1+a3 b1+b3 | ... per 128-bit lane; same for cd.
    const __m512i abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    // abcd per 128-bit lane: [a, b, c, d] partial sums of that lane (in a permuted pair order).
    const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(abcd), _mm512_extracti64x4_epi64(abcd, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

template <int R>
inline void store_sums(const __m512i* s, const int32_t* corr, int32_t* out) {
    if constexpr (R == 4) {
        const __m128i v = _mm_add_epi32(reduce4(s[0], s[1], s[2], s[3]),
                                        _mm_loadu_si128(reinterpret_cast<const __m128i*>(corr)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out), v);
    } else {
        for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_epi32(s[r]) + corr[r];
    }
}

inline uint64_t load_u64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Count of -1 weights of a T2 row (padding bits are zero; a +1 bit wins over a -1 bit).
inline int32_t t2_minus_count(const uint8_t* w, size_t rb) {
    int32_t c = 0;
    for (size_t b = 0; b < rb; b += kT2BlockBytes)
        for (int s = 0; s < 4; ++s)
            c += int32_t(_mm_popcnt_u64(load_u64(w + b + 32 + 8 * s) & ~load_u64(w + b + 8 * s)));
    return c;
}

// ---------------------------------------------------------------------------------------------
// T1 decoding. Digits 0..3: a 256-entry table looked up with vpermi2b (128 entries per lookup:
// one for codes < 128, one for >= 128, blended on the code's top bit), generated from the same
// base-3 rule as the reference for all 256 byte values:
//   lo[c]: bit 2i = digit i of c is +1, bit 2i + 1 = digit i is -1   (i = 0..3)
// Digit 4 = (c / 81) % 3 by compares on c folded to c - 243 for the codes >= 243 the packer never
// writes (folded = min(c, c + 13 mod 256)): -1 below 81, +1 from 162.
struct T1Tables {
    alignas(64) uint8_t lo[256];
};

constexpr T1Tables make_t1_tables() {
    T1Tables t{};
    for (int c = 0; c < 256; ++c) {
        int v = c, lo = 0;
        for (int i = 0; i < 4; ++i, v /= 3) {
            const int w = v % 3 - 1;
            lo |= ((w > 0 ? 1 : 0) | (w < 0 ? 2 : 0)) << (2 * i);
        }
        t.lo[c] = uint8_t(lo);
    }
    return t;
}

constexpr T1Tables kT1Tables = make_t1_tables();

struct T1Decoder {
    __m512i t0, t1, t2, t3;
    T1Decoder()
        : t0(_mm512_load_si512(kT1Tables.lo)), t1(_mm512_load_si512(kT1Tables.lo + 64)),
          t2(_mm512_load_si512(kT1Tables.lo + 128)), t3(_mm512_load_si512(kT1Tables.lo + 192)) {}

    // 64 codes -> table bytes of digits 0..3.
    inline __m512i lookup(__m512i c) const {
        return _mm512_mask_blend_epi8(_mm512_movepi8_mask(c), _mm512_permutex2var_epi8(t0, c, t1),
                                      _mm512_permutex2var_epi8(t2, c, t3));
    }
};

inline __m512i t1_fold(__m512i c) { return _mm512_min_epu8(c, _mm512_add_epi8(c, _mm512_set1_epi8(13))); }

// Masks of digit i of a block: lo = table bytes, folded = t1_fold(codes).
inline void t1_digit_masks(int i, __m512i lo, __m512i folded, __mmask64& kp, __mmask64& km) {
    if (i < 4) {
        kp = _mm512_test_epi8_mask(lo, _mm512_set1_epi8(char(1 << (2 * i))));
        km = _mm512_test_epi8_mask(lo, _mm512_set1_epi8(char(2 << (2 * i))));
    } else {
        kp = _mm512_cmpge_epu8_mask(folded, _mm512_set1_epi8(char(162)));
        km = _mm512_cmplt_epu8_mask(folded, _mm512_set1_epi8(81));
    }
}

// ---------------------------------------------------------------------------------------------
// GEMV path: rows n .. n+R-1, every token m < M (tokens inside, so the R rows' weights stay in L1).
// A token without -128 (quantize_rows never makes one: |x * 127 / amax| <= 127) takes -x for a
// -1 weight, which cannot overflow, and needs no -1 count; a token with -128 takes ~x and adds
// the rows' -1 counts, taken once on the integer ports during its pass.

// The same block of the row two passes (2 x kRows rows) on, into L2: the hardware prefetcher
// does not follow 4 short interleaved row streams. Measured from DRAM on one core, T2 6912x2560:
// no prefetch 5 GB/s, one pass ahead into L1 9, two passes ahead into L2 14.
inline void prefetch_ahead(const uint8_t* block, size_t rb) {
    _mm_prefetch(reinterpret_cast<const char*>(block + 2 * kRows * rb), _MM_HINT_T1);
}

inline bool has_int8_min(const int8_t* a, int64_t K) {
    const __m512i lowest = _mm512_set1_epi8(-128);
    int64_t k = 0;
    for (; k + 64 <= K; k += 64)
        if (_mm512_cmpeq_epi8_mask(_mm512_loadu_si512(a + k), lowest)) return true;
    return k < K && _mm512_cmpeq_epi8_mask(_mm512_maskz_loadu_epi8(plane_mask(K, k / 64), a + k), lowest);
}

// One token: kExact = the token holds -128 (select ~x, count -1 weights into corr if count).
template <int R, bool kExact>
inline void t2_gemv_token(const uint8_t* const* w, size_t rb, int64_t K, const int8_t* a, bool count,
                          int32_t* corr, int32_t* out) {
    const int64_t planes = (K + 63) / 64;
    const int64_t full_blocks = K / kT2BlockWeights;
    const __m512i ones = _mm512_set1_epi8(1), all = _mm512_set1_epi8(-1);
    __m512i s[R];
    for (int r = 0; r < R; ++r) s[r] = _mm512_setzero_si512();
    auto plane = [&](int64_t off, __m512i x) {
        __m512i nx = kExact ? _mm512_xor_si512(x, all) : _mm512_sub_epi8(_mm512_setzero_si512(), x);
        asm("" : "+v"(nx));  // one shared negation, not a masked subtract per row
        for (int r = 0; r < R; ++r) {
            const __m512i d = select(load_mask(w[r] + off), load_mask(w[r] + off + 32), x, nx);
            s[r] = add_bytes(s[r], ones, d);
            if (kExact && count)
                corr[r] += int32_t(_mm_popcnt_u64(load_u64(w[r] + off + 32) & ~load_u64(w[r] + off)));
        }
    };
    for (int64_t b = 0; b < full_blocks; ++b) {
        const int8_t* ab = a + b * kT2BlockWeights;
        for (int r = 0; r < R; ++r) prefetch_ahead(w[r] + b * kT2BlockBytes, rb);
        for (int sub = 0; sub < 4; ++sub) plane(b * kT2BlockBytes + 8 * sub, _mm512_loadu_si512(ab + 64 * sub));
    }
    for (int64_t p = full_blocks * 4; p < planes; ++p)
        plane((p / 4) * kT2BlockBytes + 8 * (p % 4), _mm512_maskz_loadu_epi8(plane_mask(K, p), a + 64 * p));
    const int32_t zero[R] = {};
    store_sums<R>(s, kExact ? corr : zero, out);
}

// Every token m of rows n .. n+R-1: token(kExact, w, a, count, corr, out) with kExact a
// std::integral_constant<bool, exact[m]> (token m holds -128). corr: the rows' -1 counts, which
// the first exact token takes (count = true) and later ones reuse.
template <int R, typename Token>
inline void gemv_rows(const uint8_t* packed, size_t rb, int64_t n, const int8_t* q, int64_t ldq,
                      int64_t M, const bool* exact, int32_t* acc, int64_t ldc, Token&& token) {
    const uint8_t* w[R];
    for (int r = 0; r < R; ++r) w[r] = packed + (n + r) * int64_t(rb);
    int32_t corr[R] = {};
    bool counted = false;
    for (int64_t m = 0; m < M; ++m) {
        const int8_t* a = q + m * ldq;
        if (exact[m]) {
            token(std::true_type{}, w, a, !counted, corr, acc + m * ldc + n);
            counted = true;
        } else {
            token(std::false_type{}, w, a, false, corr, acc + m * ldc + n);
        }
    }
}

template <int R>
__attribute__((noinline)) void t2_gemv_rows(const uint8_t* packed, size_t rb, int64_t K, int64_t n,
                                            const int8_t* q, int64_t ldq, int64_t M, const bool* exact,
                                            int32_t* acc, int64_t ldc) {
    gemv_rows<R>(packed, rb, n, q, ldq, M, exact, acc, ldc,
                 [&](auto kExact, const uint8_t* const* w, const int8_t* a, bool count,
                     int32_t* corr, int32_t* out) {
                     t2_gemv_token<R, decltype(kExact)::value>(w, rb, K, a, count, corr, out);
                 });
}

template <int R, bool kExact>
inline void t1_gemv_token(const T1Decoder& dec, const uint8_t* const* w, size_t rb, int64_t K,
                          const int8_t* a, bool count, int32_t* corr, int32_t* out) {
    const int64_t planes = (K + 63) / 64;
    const int64_t nblocks = (planes + 4) / 5;  // blocks holding a plane below K
    const __m512i ones = _mm512_set1_epi8(1), all = _mm512_set1_epi8(-1);
    __m512i s[R];
    int32_t cnt[R] = {};
    for (int r = 0; r < R; ++r) s[r] = _mm512_setzero_si512();
    for (int64_t b = 0; b < nblocks; ++b) {
        const int8_t* ab = a + b * kT1BlockWeights;
        __m512i lo[R], folded[R];
        for (int r = 0; r < R; ++r) {
            prefetch_ahead(w[r] + b * kT1BlockBytes, rb);
            const __m512i c = _mm512_loadu_si512(w[r] + b * kT1BlockBytes);
            lo[r] = dec.lookup(c);
            folded[r] = t1_fold(c);
        }
        const bool full = K >= (5 * b + 5) * 64;
        for (int i = 0; i < 5; ++i) {
            const int64_t p = 5 * b + i;
            if (!full && p >= planes) break;  // padding planes: weights are 0
            const __m512i x = full ? _mm512_loadu_si512(ab + 64 * i)
                                   : _mm512_maskz_loadu_epi8(plane_mask(K, p), ab + 64 * i);
            __m512i nx = kExact ? _mm512_xor_si512(x, all) : _mm512_sub_epi8(_mm512_setzero_si512(), x);
            asm("" : "+v"(nx));  // one shared negation, not a masked subtract per row
            for (int r = 0; r < R; ++r) {
                __mmask64 kp, km;
                t1_digit_masks(i, lo[r], folded[r], kp, km);
                s[r] = add_bytes(s[r], ones, select(kp, km, x, nx));
                if (kExact && count) cnt[r] += int32_t(_mm_popcnt_u64(_cvtmask64_u64(_kandn_mask64(kp, km))));
            }
        }
    }
    if (kExact && count)
        for (int r = 0; r < R; ++r) corr[r] = cnt[r];
    const int32_t zero[R] = {};
    store_sums<R>(s, kExact ? corr : zero, out);
}

template <int R>
__attribute__((noinline)) void t1_gemv_rows(const T1Decoder& dec, const uint8_t* packed, size_t rb,
                                            int64_t K, int64_t n, const int8_t* q, int64_t ldq,
                                            int64_t M, const bool* exact, int32_t* acc, int64_t ldc) {
    gemv_rows<R>(packed, rb, n, q, ldq, M, exact, acc, ldc,
                 [&](auto kExact, const uint8_t* const* w, const int8_t* a, bool count,
                     int32_t* corr, int32_t* out) {
                     t1_gemv_token<R, decltype(kExact)::value>(dec, w, rb, K, a, count, corr, out);
                 });
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

// e: [planes][R][2] vectors (minus, nonzero). Returns nothing; fills corr[r] with -1 counts.
template <int R>
void t2_expand(const uint8_t* packed, size_t rb, int64_t planes, int64_t n, __m512i* e,
               int32_t* corr) {
    for (int r = 0; r < R; ++r) {
        const uint8_t* w = packed + (n + r) * int64_t(rb);
        corr[r] = t2_minus_count(w, rb);
        for (int64_t p = 0; p < planes; ++p) {
            const uint8_t* blk = w + (p / 4) * kT2BlockBytes + 8 * (p % 4);
            const __mmask64 kp = load_mask(blk), km = load_mask(blk + 32);  // k-moves from memory
            e[(p * R + r) * 2] = _mm512_movm_epi8(_kandn_mask64(kp, km));
            e[(p * R + r) * 2 + 1] = _mm512_movm_epi8(_kor_mask64(kp, km));
        }
    }
}

template <int R>
void t1_expand(const T1Decoder& dec, const uint8_t* packed, size_t rb, int64_t planes, int64_t n,
               __m512i* e, int32_t* corr) {
    const int64_t nblocks = (planes + 4) / 5;
    for (int r = 0; r < R; ++r) {
        const uint8_t* w = packed + (n + r) * int64_t(rb);
        int32_t cnt = 0;
        for (int64_t b = 0; b < nblocks; ++b) {
            const __m512i c = _mm512_loadu_si512(w + b * kT1BlockBytes);
            const __m512i lo = dec.lookup(c), folded = t1_fold(c);
            for (int i = 0; i < 5 && 5 * b + i < planes; ++i) {
                __mmask64 kp, km;
                t1_digit_masks(i, lo, folded, kp, km);
                const int64_t p = 5 * b + i;
                // Planes past K hold padding (weight 0): skipped here, so counted only below K.
                cnt += int32_t(_mm_popcnt_u64(_cvtmask64_u64(km)));
                e[(p * R + r) * 2] = _mm512_movm_epi8(km);
                e[(p * R + r) * 2 + 1] = _mm512_movm_epi8(_kor_mask64(kp, km));
            }
        }
        corr[r] = cnt;
    }
}

// acc rows n..n+R-1 for tokens m0..m0+T-1 from the expanded tile e. tail: [T][64] zero-padded
// copies of the tokens' last plane (K not a multiple of 64), else null.
template <int R, int T>
__attribute__((noinline)) void gemm_tile(const __m512i* e, int64_t planes, const int8_t* q,
                                         int64_t ldq, const int8_t* tail, const int32_t* corr,
                                         int32_t* out, int64_t ldc) {
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i s[T][R];
    for (int t = 0; t < T; ++t)
        for (int r = 0; r < R; ++r) s[t][r] = _mm512_setzero_si512();
    for (int64_t p = 0; p < planes; ++p) {
        const bool last = tail && p + 1 == planes;
        const int8_t* a0 = last ? tail : q + 64 * p;
        const int64_t lda = last ? 64 : ldq;
        __m512i mi[R], nz[R];
        for (int r = 0; r < R; ++r) {
            mi[r] = _mm512_load_si512(e + (p * R + r) * 2);
            nz[r] = _mm512_load_si512(e + (p * R + r) * 2 + 1);
        }
        for (int t = 0; t < T; ++t) {
            const __m512i x = _mm512_loadu_si512(a0 + t * lda);
            for (int r = 0; r < R; ++r) s[t][r] = add_bytes(s[t][r], ones, select_bytes(x, mi[r], nz[r]));
        }
    }
    for (int t = 0; t < T; ++t) store_sums<R>(s[t], corr, out + t * ldc);
}

// The hot 4 rows x 4 tokens tile with named accumulators (GCC keeps an array of them in memory).
template <>
__attribute__((noinline)) void gemm_tile<4, 4>(const __m512i* e, int64_t planes, const int8_t* q,
                                               int64_t ldq, const int8_t* tail, const int32_t* corr,
                                               int32_t* out, int64_t ldc) {
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i s00 = _mm512_setzero_si512(), s01 = s00, s02 = s00, s03 = s00, s10 = s00, s11 = s00,
            s12 = s00, s13 = s00, s20 = s00, s21 = s00, s22 = s00, s23 = s00, s30 = s00, s31 = s00,
            s32 = s00, s33 = s00;
    for (int64_t p = 0; p < planes; ++p) {
        const bool last = tail && p + 1 == planes;
        const int8_t* a0 = last ? tail : q + 64 * p;
        const int64_t lda = last ? 64 : ldq;
        const __m512i* ep = e + p * 8;
        const __m512i m0 = ep[0], z0 = ep[1], m1 = ep[2], z1 = ep[3], m2 = ep[4], z2 = ep[5],
                      m3 = ep[6], z3 = ep[7];
#define TERNARY_STEP(t, r) s##t##r = add_bytes(s##t##r, ones, select_bytes(x##t, m##r, z##r));
        const __m512i x0 = _mm512_loadu_si512(a0), x1 = _mm512_loadu_si512(a0 + lda),
                      x2 = _mm512_loadu_si512(a0 + 2 * lda), x3 = _mm512_loadu_si512(a0 + 3 * lda);
        TERNARY_STEP(0, 0) TERNARY_STEP(0, 1) TERNARY_STEP(0, 2) TERNARY_STEP(0, 3)
        TERNARY_STEP(1, 0) TERNARY_STEP(1, 1) TERNARY_STEP(1, 2) TERNARY_STEP(1, 3)
        TERNARY_STEP(2, 0) TERNARY_STEP(2, 1) TERNARY_STEP(2, 2) TERNARY_STEP(2, 3)
        TERNARY_STEP(3, 0) TERNARY_STEP(3, 1) TERNARY_STEP(3, 2) TERNARY_STEP(3, 3)
#undef TERNARY_STEP
    }
    const __m512i t0[4] = {s00, s01, s02, s03}, t1[4] = {s10, s11, s12, s13},
                  t2[4] = {s20, s21, s22, s23}, t3[4] = {s30, s31, s32, s33};
    store_sums<4>(t0, corr, out);
    store_sums<4>(t1, corr, out + ldc);
    store_sums<4>(t2, corr, out + 2 * ldc);
    store_sums<4>(t3, corr, out + 3 * ldc);
}

template <int R, int T>
void gemm_tokens(const __m512i* e, int64_t planes, int64_t K, const int8_t* q, int64_t ldq,
                 const int32_t* corr, int32_t* out, int64_t ldc) {
    if (K % 64 == 0) return gemm_tile<R, T>(e, planes, q, ldq, nullptr, corr, out, ldc);
    alignas(64) int8_t tail[T * 64] = {};
    const int64_t last = 64 * (planes - 1);
    for (int t = 0; t < T; ++t) std::memcpy(tail + 64 * t, q + t * ldq + last, size_t(K - last));
    gemm_tile<R, T>(e, planes, q, ldq, tail, corr, out, ldc);
}

template <int R>
void gemm_rows(const __m512i* e, int64_t planes, int64_t K, const int8_t* q, int64_t ldq, int64_t M,
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

template <int R>
void ternary_rows(Format fmt, const T1Decoder* dec, const uint8_t* packed, size_t rb, int64_t K,
                  int64_t n, const int8_t* q, int64_t ldq, int64_t M, const bool* exact,
                  int32_t* acc, int64_t ldc, Scratch& scratch) {
    if (M < (fmt == Format::T2 ? kGemmMinTokensT2 : kGemmMinTokensT1)) {
        if (fmt == Format::T2) t2_gemv_rows<R>(packed, rb, K, n, q, ldq, M, exact, acc, ldc);
        else t1_gemv_rows<R>(*dec, packed, rb, K, n, q, ldq, M, exact, acc, ldc);
        return;
    }
    const int64_t planes = (K + 63) / 64;
    auto* e = static_cast<__m512i*>(scratch.get(size_t(planes) * R * 2 * sizeof(__m512i)));
    int32_t corr[R];
    if (fmt == Format::T2) t2_expand<R>(packed, rb, planes, n, e, corr);
    else t1_expand<R>(*dec, packed, rb, planes, n, e, corr);
    gemm_rows<R>(e, planes, K, q, ldq, M, corr, acc + n, ldc);
}

thread_local Scratch tl_scratch;

void ternary_any(Format fmt, const uint8_t* packed, int64_t K, int64_t n0, int64_t n1,
                 const int8_t* q, int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    const size_t rb = row_bytes(fmt, K);
    T1Decoder dec;
    Scratch& scratch = tl_scratch;
    bool exact[kGemvMaxTokens] = {};
    if (M <= kGemvMaxTokens)
        for (int64_t m = 0; m < M; ++m) exact[m] = has_int8_min(q + m * ldq, K);
    int64_t n = n0;
    for (; n + kRows <= n1; n += kRows)
        ternary_rows<kRows>(fmt, &dec, packed, rb, K, n, q, ldq, M, exact, acc, ldc, scratch);
    switch (n1 - n) {
        case 3: ternary_rows<3>(fmt, &dec, packed, rb, K, n, q, ldq, M, exact, acc, ldc, scratch); break;
        case 2: ternary_rows<2>(fmt, &dec, packed, rb, K, n, q, ldq, M, exact, acc, ldc, scratch); break;
        case 1: ternary_rows<1>(fmt, &dec, packed, rb, K, n, q, ldq, M, exact, acc, ldc, scratch); break;
        default: break;
    }
}

void ternary_t2_avx512(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                       int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    ternary_any(Format::T2, packed, K, n0, n1, q, ldq, M, acc, ldc);
}

void ternary_t1_avx512(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                       int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    ternary_any(Format::T1, packed, K, n0, n1, q, ldq, M, acc, ldc);
}

// ---------------------------------------------------------------------------------------------
// Same operations as quantize_row_ref, 16 lanes at a time: |x|, max (NaN ignored as std::max
// does), scale = 127 / max(amax, 1e-5), nearest-even rounding of x * scale, clamp (NaN -> -128
// like the reference's std::max(-128.f, r)), saturating narrow.
float quantize_row_avx512(const float* x, int64_t K, int8_t* q) {
    __m512 amax = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) amax = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + k)), amax);
    if (k < K) {
        const __mmask16 t = _cvtu32_mask16((1u << (K - k)) - 1);
        amax = _mm512_mask_max_ps(amax, t, _mm512_abs_ps(_mm512_maskz_loadu_ps(t, x + k)), amax);
    }
    const float am = _mm512_reduce_max_ps(amax);
    const float scale = 127.f / (am > 1e-5f ? am : 1e-5f);
    const __m512 vs = _mm512_set1_ps(scale), lo = _mm512_set1_ps(-128.f), hi = _mm512_set1_ps(127.f);
    auto convert = [&](__m512 v) {
        const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v, vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        return _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi));
    };
    for (k = 0; k + 16 <= K; k += 16)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k), _mm512_cvtsepi32_epi8(convert(_mm512_loadu_ps(x + k))));
    if (k < K) {
        const __mmask16 t = _cvtu32_mask16((1u << (K - k)) - 1);
        _mm512_mask_cvtsepi32_storeu_epi8(q + k, t, convert(_mm512_maskz_loadu_ps(t, x + k)));
    }
    return scale;
}

}  // namespace

const KernelTable& avx512_kernels() {
    static const KernelTable t = [] {
        KernelTable k = ref_kernels();
        k.name = "avx512";
        add_dense_kernels_avx512(k);  // f16_rows, int8_rows, attention_chunk
        k.ternary_t2 = ternary_t2_avx512;
        k.ternary_t1 = ternary_t1_avx512;
        k.ternary_tl2 = tl2::avx512_kernel();  // tl2_avx512.cpp
        k.ternary_tl1 = ternary_tl1_avx512;  // tl1_avx512.cpp
        k.quantize_row = quantize_row_avx512;
        return k;
    }();
    return t;
}

}  // namespace ternary
