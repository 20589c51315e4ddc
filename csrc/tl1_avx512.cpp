// TL1 kernel, AVX-512 (BW/VBMI; only this file and avx512*.cpp get those flags). Layout: ternary.h.
//
// Per token and pair (a0, a1) a 16-byte table of the 8 nonzero sums v_p = w0 a0 + w1 a1 as
// int16 split into bytes (lo in 0..7, hi in 8..15); 4 pairs' tables fill one zmm, one per lane.
// A 32-byte unit (16 rows x 4 pairs) decodes once into two zmm of index words (x, x ^ 8):
//   low byte  = lo-byte slot p of the pair's table, high byte = hi-byte slot 8 + p,
//   bit 7 set in both for a (0, 0) pair (vpshufb writes 0),
// so one vpshufb of a table zmm by an index zmm gives 32 exact int16 sums (8 rows x 4 pairs,
// 64 weights) and one vpaddw accumulates them; no weight is multiplied.
// Decode per unit (128 weights): vpermb (bytes -> words (b, b)), vpxord, vpsllw, vpsrlw and two
// vpternlogd, shared by every token of a block of up to kTokens (8): per 64 weights and token
// the lookup is 1 vpshufb + 1 vpaddw (+ half a table load), the decode 3 ops / tokens.
// Sums stay int16 for kChunkGroups groups (64 x 256 < 2^15), then widen to int32 into acc
// (the first chunk stores). K is cut into spans whose tables (block of tokens) fit kTableBytes
// of L1; inside a span, tiles in address order each read their span's contiguous weights once,
// with the next tile's prefetched into L2.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "tl1.h"

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ternary {
namespace {

constexpr int64_t kChunkGroups = 64;
constexpr int kTokens = 8;
constexpr int64_t kAheadTiles = 1;  // measured: 1 beats 2 and 4 from DRAM
constexpr int64_t kTableBytes = 24 << 10;  // tables of one span of K for a block of tokens

// Tables of groups [g0, g0 + ng) of token a, in tl1::build_tables' byte format.
void build_tables(const int8_t* a, int64_t K, int64_t g0, int64_t ng, uint8_t* tab) {
    // Word 8L + p of group h's zmm takes activation 8h + 2L (a0) and 8h + 2L + 1 (a1).
    alignas(64) int16_t i0[4][32], i1[4][32];
    for (int h = 0; h < 4; ++h)
        for (int w = 0; w < 32; ++w) {
            i0[h][w] = int16_t(8 * h + 2 * (w / 8));
            i1[h][w] = int16_t(8 * h + 2 * (w / 8) + 1);
        }
    // Pattern p (word p of a lane): w0 = +1 for p = 5..7, -1 for 0..2; w1 = +1 for 2, 4, 7,
    // -1 for 0, 3, 5 (tl1::kW0 / kW1).
    const __mmask32 k0p = 0xE0E0E0E0u, k0n = 0x07070707u, k1p = 0x94949494u, k1n = 0x29292929u;
    const __m512i zero = _mm512_setzero_si512();
    // Words [v0 .. v7] of a lane -> bytes [lo v0 .. lo v7, hi v0 .. hi v7].
    const __m512i split = _mm512_broadcast_i32x4(
        _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
    for (int64_t g = 0; g < ng; g += 4) {
        const int64_t k = 8 * (g0 + g), left = K - k;
        const __mmask32 lm = left >= 32 ? ~__mmask32(0) : left > 0 ? (__mmask32(1) << left) - 1 : 0;
        const __m512i x = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(lm, a + k));
        const int hn = int(std::min<int64_t>(4, ng - g));
        for (int h = 0; h < hn; ++h) {
            const __m512i a0 = _mm512_permutexvar_epi16(_mm512_load_si512(i0[h]), x);
            const __m512i a1 = _mm512_permutexvar_epi16(_mm512_load_si512(i1[h]), x);
            __m512i v = _mm512_maskz_mov_epi16(k0p, a0);
            v = _mm512_mask_sub_epi16(v, k0n, zero, a0);
            v = _mm512_mask_add_epi16(v, k1p, v, a1);
            v = _mm512_mask_sub_epi16(v, k1n, v, a1);
            _mm512_store_si512(tab + 64 * (g + h), _mm512_shuffle_epi8(v, split));
        }
    }
}

// 8 rows' int32 sums of an int16 accumulator (lane L = pairs 4g + L) into o[0..7].
inline void put8(__m512i a, int32_t* o, bool first) {
    const __m512i s = _mm512_add_epi32(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(a)),
                                       _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(a, 1)));
    __m256i r = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
    if (!first) r = _mm256_add_epi32(r, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(o)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), r);
}

// One tile (16 rows), ng groups from `unit`, MT tokens with tables tab + m * tab_stride.
template <int MT>
void tile_chunk(const uint8_t* unit, const uint8_t* ahead, int64_t ng, const uint8_t* tab,
                int64_t tab_stride, int32_t* out, int64_t ldc, bool first) {
    __m512i dup;
    {
        alignas(64) uint8_t d[64];
        for (int i = 0; i < 64; ++i) d[i] = uint8_t(i / 2);
        dup = _mm512_load_si512(d);
    }
    const __m512i flip = _mm512_set1_epi16(short(0x8800)), sel = _mm512_set1_epi16(short(0x8080));
    __m512i lo[MT], hi[MT];
    for (int m = 0; m < MT; ++m) lo[m] = hi[m] = _mm512_setzero_si512();
    for (int64_t g = 0; g < ng; ++g) {
        if ((g & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(ahead + 32 * g), _MM_HINT_T1);
        const __m512i y = _mm512_castsi256_si512(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(unit + 32 * g)));
        const __m512i w = _mm512_permutexvar_epi8(dup, y);     // words (b, b)
        const __m512i x = _mm512_xor_si512(w, flip);           // high byte ^ 0x88
        const __m512i s = _mm512_slli_epi16(w, 4);
        const __m512i z0 = _mm512_ternarylogic_epi32(x, s, sel, 0xD8);  // bit 7s from s
        const __m512i r = _mm512_srli_epi16(x, 4);
        const __m512i z1 = _mm512_ternarylogic_epi32(r, w, sel, 0xD8);  // bit 7s from w
        for (int m = 0; m < MT; ++m) {
            const __m512i t = _mm512_load_si512(tab + m * tab_stride + 64 * g);
            lo[m] = _mm512_add_epi16(lo[m], _mm512_shuffle_epi8(t, z0));
            hi[m] = _mm512_add_epi16(hi[m], _mm512_shuffle_epi8(t, z1));
        }
    }
    for (int m = 0; m < MT; ++m) {
        put8(lo[m], out + m * ldc, first);
        put8(hi[m], out + m * ldc + 8, first);
    }
}

}  // namespace

void ternary_tl1_avx512(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                        int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    const int64_t N = ldc;
    int64_t t0, t1;
    tl1::tile_range(N, n0, n1, t0, t1);
    tl1::edges_scalar(packed, K, N, n0, n1, t0, t1, q, ldq, M, acc, ldc);
    if (t0 == t1) return;
    const size_t rb = row_bytes(Format::TL1, K), tile_bytes = kTL1TileRows * rb;
    const int64_t G = tl1::groups(K);
    struct alignas(64) Line { uint8_t b[64]; };
    thread_local std::vector<Line> buf;
    for (int64_t m0 = 0; m0 < M; m0 += kTokens) {
        const int mt = int(std::min<int64_t>(kTokens, M - m0));
        // K in spans whose tables (mt tokens) fit kTableBytes of L1, of balanced sizes; tiles
        // inside a span, so each tile's span of weights (one contiguous piece) is read once per
        // block of tokens and every lookup's table comes from L1.
        const int64_t cap = std::max<int64_t>(kChunkGroups / 2, kTableBytes / (64 * mt));
        const int64_t nspans = (G + cap - 1) / cap, span = (G + nspans - 1) / nspans;
        const int64_t stride = span * 64;
        buf.resize(size_t(mt * span));
        uint8_t* tab = reinterpret_cast<uint8_t*>(buf.data());
        for (int64_t s0 = 0; s0 < G; s0 += span) {
            const int64_t sn = std::min(span, G - s0);
            for (int m = 0; m < mt; ++m) build_tables(q + (m0 + m) * ldq, K, s0, sn, tab + m * stride);
            for (int64_t t = t0; t < t1; ++t) {
                const uint8_t* tile = packed + size_t(t) * tile_bytes;
                int32_t* out = acc + m0 * ldc + kTL1TileRows * t;
                for (int64_t c0 = s0; c0 < s0 + sn; c0 += kChunkGroups) {
                    const int64_t ng = std::min(kChunkGroups, s0 + sn - c0);
                    const uint8_t* unit = tile + 32 * size_t(c0);
                    // The same groups kAheadTiles tiles on (a row of the matrix further) into L2:
                    // the hardware prefetcher alone leaves a GEMV from DRAM at ~70 % of T2's.
                    const uint8_t* ahead = t + kAheadTiles < t1 ? unit + kAheadTiles * tile_bytes : unit;
                    const uint8_t* tb = tab + 64 * (c0 - s0);
                    const bool first = c0 == 0;
                    switch (mt) {
#define TL1_CASE(n) case n: tile_chunk<n>(unit, ahead, ng, tb, stride, out, ldc, first); break;
                        TL1_CASE(1) TL1_CASE(2) TL1_CASE(3) TL1_CASE(4)
                        TL1_CASE(5) TL1_CASE(6) TL1_CASE(7) default: TL1_CASE(8)
#undef TL1_CASE
                    }
                }
            }
        }
    }
}

}  // namespace ternary
