// TL1 kernel, AVX2 (only this file and avx2*.cpp get those flags). Layout: ternary.h; the scheme
// is tl1_avx512.cpp's at half width: a ymm holds 2 pairs' 16-byte tables, half a 32-byte unit
// (16 bytes, 2 pairs x 16 rows) decodes into two ymm of index words (x, x ^ 8) by vpshufb
// (bytes -> words (b, b)) and shifts / selects of bit 7, and each vpshufb of a table ymm by an
// index ymm gives 16 exact int16 sums (8 rows x 2 pairs, 32 weights). Both halves of a unit add
// into the same accumulators, so sums stay int16 for kChunkGroups groups (2 x 32 x 256 < 2^15).
// Tables: build_tables below (adds / subtracts of int16 activations and a word transpose).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "tl1.h"

namespace ternary {
namespace {

constexpr int64_t kChunkGroups = 32;
constexpr int kTokens = 4;
constexpr int64_t kTabBytes = kChunkGroups * 64;

// Tables of groups [g0, g0 + ng) of token a, in tl1::build_tables' byte format: 16 pairs at a
// time as int16 vectors of the 8 sums (-s, -a0, -d, -a1, a1, d, a0, s; s = a0 + a1,
// d = a0 - a1), an 8 x 8 word transpose per lane (pair j in lane 0, pair j + 8 in lane 1), then
// each lane's words split into lo / hi bytes.
void build_tables(const int8_t* a, int64_t K, int64_t g0, int64_t ng, uint8_t* tab) {
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const __m256i zero = _mm256_setzero_si256();
    alignas(32) uint8_t tmp[256];
    for (int64_t g = 0; g < ng; g += 4) {
        const int64_t k = 8 * (g0 + g);
        __m256i x;
        if (k + 32 <= K) {
            x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k));
        } else {  // activations past K are 0
            alignas(32) int8_t pad[32] = {};
            for (int64_t i = k; i < K; ++i) pad[i - k] = a[i];
            x = _mm256_load_si256(reinterpret_cast<const __m256i*>(pad));
        }
        // Word j of x is pair j (a0 low byte, a1 high byte): pairs 0..7 in lane 0, 8..15 in lane 1.
        const __m256i a0 = _mm256_srai_epi16(_mm256_slli_epi16(x, 8), 8), a1 = _mm256_srai_epi16(x, 8);
        const __m256i sm = _mm256_add_epi16(a0, a1), df = _mm256_sub_epi16(a0, a1);
        const __m256i v0 = _mm256_sub_epi16(zero, sm), v1 = _mm256_sub_epi16(zero, a0),
                      v2 = _mm256_sub_epi16(zero, df), v3 = _mm256_sub_epi16(zero, a1);
        const __m256i t0 = _mm256_unpacklo_epi16(v0, v1), t1 = _mm256_unpackhi_epi16(v0, v1);
        const __m256i t2 = _mm256_unpacklo_epi16(v2, v3), t3 = _mm256_unpackhi_epi16(v2, v3);
        const __m256i t4 = _mm256_unpacklo_epi16(a1, df), t5 = _mm256_unpackhi_epi16(a1, df);
        const __m256i t6 = _mm256_unpacklo_epi16(a0, sm), t7 = _mm256_unpackhi_epi16(a0, sm);
        const __m256i u0 = _mm256_unpacklo_epi32(t0, t2), u1 = _mm256_unpackhi_epi32(t0, t2);
        const __m256i u2 = _mm256_unpacklo_epi32(t1, t3), u3 = _mm256_unpackhi_epi32(t1, t3);
        const __m256i u4 = _mm256_unpacklo_epi32(t4, t6), u5 = _mm256_unpackhi_epi32(t4, t6);
        const __m256i u6 = _mm256_unpacklo_epi32(t5, t7), u7 = _mm256_unpackhi_epi32(t5, t7);
        const __m256i r[8] = {_mm256_unpacklo_epi64(u0, u4), _mm256_unpackhi_epi64(u0, u4),
                              _mm256_unpacklo_epi64(u1, u5), _mm256_unpackhi_epi64(u1, u5),
                              _mm256_unpacklo_epi64(u2, u6), _mm256_unpackhi_epi64(u2, u6),
                              _mm256_unpacklo_epi64(u3, u7), _mm256_unpackhi_epi64(u3, u7)};
        const bool whole = g + 4 <= ng;
        uint8_t* dst = whole ? tab + 64 * g : tmp;
        for (int j = 0; j < 8; ++j) {
            const __m256i t = _mm256_shuffle_epi8(r[j], split);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 16 * j), _mm256_castsi256_si128(t));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 16 * (j + 8)), _mm256_extracti128_si256(t, 1));
        }
        if (!whole) std::memcpy(tab + 64 * g, tmp, size_t(64 * (ng - g)));
    }
}

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
                build_tables(q + (m0 + m) * ldq, K, c0, ng, tab + m * kTabBytes);
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
