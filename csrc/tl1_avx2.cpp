// TL1 kernel, AVX2 (only this file and avx2*.cpp get those flags). Layout: ternary.h; the scheme
// is tl1_avx512.cpp's at half width: a ymm holds 2 pairs' 16-byte tables, half a 32-byte unit
// (16 bytes, 2 pairs x 16 rows) decodes into two ymm of index words (x, x ^ 8) by vpshufb
// (bytes -> words (b, b)) and shifts / selects of bit 7, and each vpshufb of a table ymm by an
// index ymm gives 16 exact int16 sums (8 rows x 2 pairs, 32 weights). Both halves of a unit add
// into the same accumulators, so sums stay int16 for kChunkGroups groups (2 x 32 x 256 < 2^15).
// Tables are built by the portable tl1::build_tables.
#include <immintrin.h>

#include <algorithm>

#include "tl1.h"

namespace ternary {
namespace {

constexpr int64_t kChunkGroups = 32;
constexpr int kTokens = 4;
constexpr int64_t kTabBytes = kChunkGroups * 64;

inline void put8(__m256i a, int32_t* o, bool first) {
    __m256i r = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(a)),
                                 _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a, 1)));
    if (!first) r = _mm256_add_epi32(r, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(o)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), r);
}

template <int MT>
void tile_chunk(const uint8_t* unit, const uint8_t* next, int64_t ng, const uint8_t* tab,
                int32_t* out, int64_t ldc, bool first) {
    const __m256i dup = _mm256_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9,
                                         9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    const __m256i flip = _mm256_set1_epi16(short(0x8800)), bit7 = _mm256_set1_epi16(short(0x8080));
    __m256i lo[MT], hi[MT];
    for (int m = 0; m < MT; ++m) lo[m] = hi[m] = _mm256_setzero_si256();
    for (int64_t g = 0; g < ng; ++g) {
        if ((g & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(next + 32 * g), _MM_HINT_T0);
        for (int u = 0; u < 2; ++u) {
            const __m256i b = _mm256_broadcastsi128_si256(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(unit + 32 * g + 16 * u)));
            const __m256i w = _mm256_shuffle_epi8(b, dup);  // words (b, b)
            const __m256i x = _mm256_xor_si256(w, flip);
            const __m256i s = _mm256_slli_epi16(w, 4);
            const __m256i r = _mm256_srli_epi16(x, 4);
            // bits 0..6 from x / r, bit 7 of each byte from s / w
            const __m256i z0 = _mm256_xor_si256(x, _mm256_and_si256(_mm256_xor_si256(x, s), bit7));
            const __m256i z1 = _mm256_xor_si256(r, _mm256_and_si256(_mm256_xor_si256(r, w), bit7));
            for (int m = 0; m < MT; ++m) {
                const __m256i t = _mm256_load_si256(
                    reinterpret_cast<const __m256i*>(tab + m * kTabBytes + 64 * g + 32 * u));
                lo[m] = _mm256_add_epi16(lo[m], _mm256_shuffle_epi8(t, z0));
                hi[m] = _mm256_add_epi16(hi[m], _mm256_shuffle_epi8(t, z1));
            }
        }
    }
    for (int m = 0; m < MT; ++m) {
        put8(lo[m], out + m * ldc, first);
        put8(hi[m], out + m * ldc + 8, first);
    }
}

}  // namespace

void ternary_tl1_avx2(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                      int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    const int64_t N = ldc;
    int64_t t0, t1;
    tl1::tile_range(N, n0, n1, t0, t1);
    tl1::edges_scalar(packed, K, N, n0, n1, t0, t1, q, ldq, M, acc, ldc);
    if (t0 == t1) return;
    const size_t rb = row_bytes(Format::TL1, K), tile_bytes = kTL1TileRows * rb;
    const int64_t G = tl1::groups(K);
    alignas(64) uint8_t tab[kTokens * kTabBytes];
    for (int64_t c0 = 0; c0 < G; c0 += kChunkGroups) {
        const int64_t ng = std::min(kChunkGroups, G - c0);
        for (int64_t m0 = 0; m0 < M; m0 += kTokens) {
            const int mt = int(std::min<int64_t>(kTokens, M - m0));
            for (int m = 0; m < mt; ++m)
                tl1::build_tables(q + (m0 + m) * ldq, K, c0, ng, tab + m * kTabBytes);
            for (int64_t t = t0; t < t1; ++t) {
                const uint8_t* unit = packed + size_t(t) * tile_bytes + 32 * size_t(c0);
                const uint8_t* next = t + 2 < t1 ? unit + 2 * tile_bytes : unit;
                int32_t* out = acc + m0 * ldc + kTL1TileRows * t;
                const bool first = c0 == 0;
                switch (mt) {
                    case 1: tile_chunk<1>(unit, next, ng, tab, out, ldc, first); break;
                    case 2: tile_chunk<2>(unit, next, ng, tab, out, ldc, first); break;
                    case 3: tile_chunk<3>(unit, next, ng, tab, out, ldc, first); break;
                    default: tile_chunk<4>(unit, next, ng, tab, out, ldc, first); break;
                }
            }
        }
    }
}

}  // namespace ternary
