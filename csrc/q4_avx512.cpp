// AVX-512 (BW + VNNI) Q4 lm_head rows; layout and contract in ternary.h (KernelTable::q4_rows).
//
// Per group of 128 weights and row: one 64-byte load holds them all as nibbles. The low nibbles
// (weights 0..63) meet activation register a0, the high nibbles (64..127) a1:
//   s   = maddubs(u_lo, a0) + maddubs(u_hi, a1)   int16 lanes, each 4 products |u a| <= 15 * 128
//   acc = vpdpwssd(acc, s, sub[g])                int32 lanes += sub * (two int16 lanes)
// The nibbles are u = w + 8 (unsigned, as vpmaddubsw wants), so each row ends by subtracting
// 8 * sum_g sub[g] * qsum[g]. All integer: the same int32 as the reference in any order.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "dense.h"

namespace ternary {
namespace {
// GEMV prefetch distance, in passes of R rows (2: 1.05-1.17x over 1 in alternating runs on the
// bitnet-2b head, within this machine's noise beyond that).
constexpr int kPrefetchPasses = 2;

// acc += s.lo * c.lo + s.hi * c.hi per int32 lane. Inline asm: GCC 12 copies the accumulator
// around every _mm512_dpwssd_epi32 in a loop (as with vpdpbusd in avx512.cpp).
inline __m512i dot_pairs(__m512i acc, __m512i s, __m512i c) {
    asm("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(s), "v"(c));
    return acc;
}

// sum_g sub[g] * qsum[g] over G int16 pairs.
inline int32_t offset_dot(const int16_t* sub, const int16_t* qsum, int64_t G) {
    __m512i c = _mm512_setzero_si512();
    for (int64_t g = 0; g < G; g += 32) {
        const __mmask32 m = G - g >= 32 ? ~__mmask32(0) : __mmask32((1u << (G - g)) - 1);
        c = dot_pairs(c, _mm512_maskz_loadu_epi16(m, sub + g), _mm512_maskz_loadu_epi16(m, qsum + g));
    }
    return _mm512_reduce_add_epi32(c);
}

// R rows starting at w / sub (rows G * 64 bytes and G scales apart) against one token a.
// kPrefetch (GEMV): walk the R rows kPrefetchPasses passes on into L2 at the rate these are read,
// as the dense GEMV does: R short interleaved streams restart every pass, too short for the
// hardware prefetcher (without it: 17 GB/s instead of ~30 on the bitnet-2b head, 2 threads).
template <int R, bool kPrefetch>
inline void q4_pass(const uint8_t* w, const int16_t* sub, int64_t G, const int8_t* a,
                    const int16_t* qsum, int32_t* out) {
    const __m512i nib = _mm512_set1_epi8(0x0F);
    __m512i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
    const char* next = reinterpret_cast<const char*>(w + kPrefetchPasses * R * G * kQ4GroupBytes);
    for (int64_t g = 0; g < G; ++g) {
        if constexpr (kPrefetch)
            for (int r = 0; r < R; ++r) _mm_prefetch(next + (g * R + r) * 64, _MM_HINT_T1);
        const __m512i a0 = _mm512_loadu_si512(a + g * kQ4Group);
        const __m512i a1 = _mm512_loadu_si512(a + g * kQ4Group + 64);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            const __m512i p = _mm512_loadu_si512(w + (r * G + g) * kQ4GroupBytes);
            const __m512i lo = _mm512_and_si512(p, nib);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(p, 4), nib);
            const __m512i s = _mm512_add_epi16(_mm512_maddubs_epi16(lo, a0), _mm512_maddubs_epi16(hi, a1));
            acc[r] = dot_pairs(acc[r], s, _mm512_set1_epi16(sub[r * G + g]));
        }
    }
    for (int r = 0; r < R; ++r) {
        // Unsigned arithmetic: wraps like the vector lanes (the true value fits, kQ4MaxK).
        const uint32_t dot = uint32_t(_mm512_reduce_add_epi32(acc[r]));
        out[r] = int32_t(dot - 8u * uint32_t(offset_dot(sub + r * G, qsum, G)));
    }
}

}  // namespace

void q4_rows_avx512(const uint8_t* packed, const int16_t* sub, int64_t K, int64_t n0, int64_t n1,
                    const int8_t* q, const int16_t* qsum, int64_t M, int32_t* acc, int64_t ldc) {
    constexpr int R = 4;
    const int64_t G = K / kQ4Group;
    int32_t out[R];
    int64_t n = n0;
    for (; n + R <= n1; n += R) {
        const uint8_t* w = packed + n * G * kQ4GroupBytes;
        for (int64_t m = 0; m < M; ++m) {
            if (M == 1) q4_pass<R, true>(w, sub + n * G, G, q, qsum, out);
            else q4_pass<R, false>(w, sub + n * G, G, q + m * K, qsum + m * G, out);
            for (int r = 0; r < R; ++r) acc[m * ldc + n + r] = out[r];
        }
    }
    for (; n < n1; ++n)
        for (int64_t m = 0; m < M; ++m) {
            q4_pass<1, false>(packed + n * G * kQ4GroupBytes, sub + n * G, G, q + m * K, qsum + m * G, out);
            acc[m * ldc + n] = out[0];
        }
}

}  // namespace ternary
