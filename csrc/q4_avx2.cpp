// AVX2 Q4 lm_head rows; layout and contract in ternary.h (KernelTable::q4_rows). As
// q4_avx512.cpp with two 32-byte halves per group and vpmaddwd + add for the sub-scale:
//   s   = sum of maddubs(u, a) over the 4 quarters   int16 lanes, 8 products each (<= 15360)
//   acc = acc + madd(s, sub[g])                      int32 lanes
// then 8 * sum_g sub[g] * qsum[g] off each row (nibbles are u = w + 8). Integer throughout.
#include <immintrin.h>

#include "dense.h"

namespace ternary {
namespace {

inline int32_t hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

inline int32_t offset_dot(const int16_t* sub, const int16_t* qsum, int64_t G) {
    __m256i c = _mm256_setzero_si256();
    int64_t g = 0;
    for (; g + 16 <= G; g += 16)
        c = _mm256_add_epi32(c, _mm256_madd_epi16(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sub + g)),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qsum + g))));
    uint32_t s = uint32_t(hsum(c));
    for (; g < G; ++g) s += uint32_t(int32_t(sub[g]) * qsum[g]);
    return int32_t(s);
}

template <int R>
inline void q4_pass(const uint8_t* w, const int16_t* sub, int64_t G, const int8_t* a,
                    const int16_t* qsum, int32_t* out) {
    const __m256i nib = _mm256_set1_epi8(0x0F);
    __m256i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
    for (int64_t g = 0; g < G; ++g) {
        const int8_t* ag = a + g * kQ4Group;
        __m256i av[4];
        for (int i = 0; i < 4; ++i) av[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ag + 32 * i));
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            const uint8_t* p = w + (r * G + g) * kQ4GroupBytes;
            const __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
            const __m256i p1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
            // p0 low nibbles: weights 0..31, p1: 32..63; high nibbles: 64..95, 96..127.
            __m256i s = _mm256_maddubs_epi16(_mm256_and_si256(p0, nib), av[0]);
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(p1, nib), av[1]));
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(p0, 4), nib), av[2]));
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(p1, 4), nib), av[3]));
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(s, _mm256_set1_epi16(sub[r * G + g])));
        }
    }
    for (int r = 0; r < R; ++r)
        out[r] = int32_t(uint32_t(hsum(acc[r])) - 8u * uint32_t(offset_dot(sub + r * G, qsum, G)));
}

}  // namespace

void q4_rows_avx2(const uint8_t* packed, const int16_t* sub, int64_t K, int64_t n0, int64_t n1,
                  const int8_t* q, const int16_t* qsum, int64_t M, int32_t* acc, int64_t ldc) {
    constexpr int R = 4;
    const int64_t G = K / kQ4Group;
    int32_t out[R];
    int64_t n = n0;
    for (; n + R <= n1; n += R)
        for (int64_t m = 0; m < M; ++m) {
            q4_pass<R>(packed + n * G * kQ4GroupBytes, sub + n * G, G, q + m * K, qsum + m * G, out);
            for (int r = 0; r < R; ++r) acc[m * ldc + n + r] = out[r];
        }
    for (; n < n1; ++n)
        for (int64_t m = 0; m < M; ++m) {
            q4_pass<1>(packed + n * G * kQ4GroupBytes, sub + n * G, G, q + m * K, qsum + m * G, out);
            acc[m * ldc + n] = out[0];
        }
}

}  // namespace ternary
