// TL2 kernel for AVX2 (only this file's ISA flags: -mavx2 -mfma -mf16c). Layout: ternary.h.
//
// No vpermw here, so the sign/magnitude split of the codes does the work. Per token and group of
// 3 activations a 16-entry int16 table of magnitudes P[m] = sum_d w_d(m) a_d (m = 0..13, 0 for
// 14, 15; adds and subtracts only), stored as its 16 low bytes then its 16 high bytes. For 16 rows
// (half a tile, one ymm of code words x):
//   m = x & 15;  L = vpshufb(LO, m)       -> low byte of P[m] (word's high byte: LO[0] = 0)
//                H = vpshufb(HI, m << 8)   -> high byte of P[m] << 8 (low byte: HI[0] = 0)
//   acc16 += vpsignw(L | H, x << 11)      -> bit 4 of the code (the sign) becomes the sign bit;
//                                            a zero magnitude has P[0] = 0 whatever the sign.
// The code extraction (shift, or a funnel of two shifts and an or where a code straddles two
// words) and m, m << 8, x << 11 are shared by every token of a token tile. |P| <= 384: int16
// sums are widened every kFlushBlocks blocks.
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "tl2.h"

namespace ternary {
namespace {

constexpr int kMaxTokens = 4;
constexpr int64_t kTableBytes = 16384;
constexpr int kFlushBlocks = 5;  // 80 groups * 384 < 32767
constexpr int kTable = 32;       // bytes per table: LO[16], HI[16]

struct Lanes {
    int16_t w[3][2][16];  // [digit d][+1 / -1][magnitude m]: 0xFFFF where weight d of m is +-1
};
constexpr Lanes make_lanes() {
    Lanes t{};
    for (int m = 0; m <= kTL2MaxMagnitude; ++m) {
        int v = m, w[3] = {};
        for (int i = 2; i >= 0; --i) {  // balanced ternary, as tl2::weight_of
            w[i] = ((v + 1) % 3 + 3) % 3 - 1;
            v = (v - w[i]) / 3;
        }
        for (int d = 0; d < 3; ++d) {
            if (w[d] > 0) t.w[d][0][m] = -1;
            if (w[d] < 0) t.w[d][1][m] = -1;
        }
    }
    return t;
}
alignas(32) constexpr Lanes kLanes = make_lanes();

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
thread_local Scratch tl_tables;

inline __m256i lane_mask(int d, int s) {
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(kLanes.w[d][s]));
}

// Magnitude tables of groups [g0, g1) of token a into dst [(g1 - g0)][32 bytes].
void build_tables(const int8_t* a, int64_t K, int64_t g0, int64_t g1, uint8_t* dst) {
    const __m256i p0 = lane_mask(0, 0), n0 = lane_mask(0, 1), p1 = lane_mask(1, 0),
                  n1 = lane_mask(1, 1), p2 = lane_mask(2, 0), n2 = lane_mask(2, 1);
    // Per 128-bit lane (entries 0..7 | 8..15): low bytes, then high bytes.
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    for (int64_t g = g0; g < g1; ++g) {
        const int64_t k = 3 * g;
        const int a0 = k < K ? a[k] : 0, a1 = k + 1 < K ? a[k + 1] : 0, a2 = k + 2 < K ? a[k + 2] : 0;
        const __m256i x0 = _mm256_set1_epi16(int16_t(a0)), x1 = _mm256_set1_epi16(int16_t(a1)),
                      x2 = _mm256_set1_epi16(int16_t(a2));
        __m256i t = _mm256_sub_epi16(_mm256_and_si256(x0, p0), _mm256_and_si256(x0, n0));
        t = _mm256_add_epi16(t, _mm256_sub_epi16(_mm256_and_si256(x1, p1), _mm256_and_si256(x1, n1)));
        t = _mm256_add_epi16(t, _mm256_sub_epi16(_mm256_and_si256(x2, p2), _mm256_and_si256(x2, n2)));
        // [lo 0..7, hi 0..7 | lo 8..15, hi 8..15] -> qwords 0, 2, 1, 3: [lo 0..15 | hi 0..15]
        t = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(t, split), 0xd8);
        _mm256_store_si256(reinterpret_cast<__m256i*>(dst + (g - g0) * kTable), t);
    }
}

// Code i of a block from the 5 word vectors of 16 rows: bits 0..4 of each lane (garbage above).
template <int i>
inline __m256i code(const __m256i* w) {
    constexpr int bit = 5 * i, j = bit / 16, s = bit % 16;
    if constexpr (s == 0) return w[j];
    else if constexpr (s <= 11) return _mm256_srli_epi16(w[j], s);
    else return _mm256_or_si256(_mm256_srli_epi16(w[j], s), _mm256_slli_epi16(w[j + 1], 16 - s));
}

// Decoded group of 16 rows: magnitude in the low byte, magnitude in the high byte, sign word.
struct Decoded {
    __m256i m, mh, sg;
};

inline Decoded decode(__m256i x) {
    const __m256i m = _mm256_and_si256(x, _mm256_set1_epi16(15));
    return {m, _mm256_slli_epi16(m, 8), _mm256_slli_epi16(x, 11)};
}

inline __m256i lookup(const Decoded& d, __m256i lo, __m256i hi) {
    const __m256i v = _mm256_or_si256(_mm256_shuffle_epi8(lo, d.m), _mm256_shuffle_epi8(hi, d.mh));
    return _mm256_sign_epi16(v, d.sg);
}

template <int T, int i>
inline void group(const __m256i (*w)[kTL2BlockWords], const uint8_t* tb, int64_t tstride,
                  __m256i (*s)[2]) {
    const Decoded d0 = decode(code<i>(w[0])), d1 = decode(code<i>(w[1]));
    for (int k = 0; k < T; ++k) {
        const uint8_t* tp = tb + k * tstride + i * kTable;
        const __m256i lo = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(tp)));
        const __m256i hi = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(tp + 16)));
        s[k][0] = _mm256_add_epi16(s[k][0], lookup(d0, lo, hi));
        s[k][1] = _mm256_add_epi16(s[k][1], lookup(d1, lo, hi));
    }
}

template <int T, int... I>
inline void block(const __m256i (*w)[kTL2BlockWords], const uint8_t* tb, int64_t tstride,
                  __m256i (*s)[2], std::integer_sequence<int, I...>) {
    (group<T, I>(w, tb, tstride, s), ...);
}

// Tile t (nr rows), blocks [b0, b1), T tokens' tables tab + k * tstride; rows inside [n0, n1)
// get the sums (first) or add them.
template <int T>
__attribute__((noinline)) void tile_pass(const uint8_t* packed, int64_t rb, int64_t t, int64_t nr,
                                         int64_t b0, int64_t b1, const uint8_t* tab,
                                         int64_t tstride, int64_t n0, int64_t n1, bool first,
                                         int32_t* acc, int64_t ldc) {
    const uint8_t* base = packed + t * kTL2TileRows * rb;
    const int64_t vstride = 2 * nr;
    alignas(32) int32_t s32[T][32] = {};
    __m256i s[T][2];
    for (int k = 0; k < T; ++k) s[k][0] = s[k][1] = _mm256_setzero_si256();
    auto flush = [&] {
        for (int k = 0; k < T; ++k)
            for (int h = 0; h < 2; ++h) {
                __m256i* d = reinterpret_cast<__m256i*>(s32[k] + 16 * h);
                d[0] = _mm256_add_epi32(d[0], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s[k][h])));
                d[1] = _mm256_add_epi32(d[1], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s[k][h], 1)));
                s[k][h] = _mm256_setzero_si256();
            }
    };
    alignas(32) uint16_t part[kTL2BlockWords][32] = {};  // a short tile's block, zero-padded
    int pending = 0;
    for (int64_t b = b0; b < b1; ++b) {
        const uint8_t* wp = base + b * kTL2BlockWords * vstride;
        // The same block of the next tile, into L2 (a chunk strides over tiles; as tl2_avx512).
        for (int j = 0; j < kTL2BlockWords; ++j)
            _mm_prefetch(reinterpret_cast<const char*>(wp + kTL2TileRows * rb + 64 * j), _MM_HINT_T1);
        if (nr < kTL2TileRows) {
            for (int j = 0; j < kTL2BlockWords; ++j) std::memcpy(part[j], wp + j * vstride, size_t(vstride));
            wp = reinterpret_cast<const uint8_t*>(part);
        }
        __m256i w[2][kTL2BlockWords];
        for (int h = 0; h < 2; ++h)
            for (int j = 0; j < kTL2BlockWords; ++j)
                w[h][j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 64 * j + 32 * h));
        block<T>(w, tab + (b - b0) * kTL2BlockGroups * kTable, tstride, s,
                 std::make_integer_sequence<int, kTL2BlockGroups>{});
        if (++pending == kFlushBlocks) {
            flush();
            pending = 0;
        }
    }
    flush();
    const int64_t row0 = t * kTL2TileRows;
    const int64_t r0 = std::max<int64_t>(n0 - row0, 0), r1 = std::min<int64_t>(n1 - row0, nr);
    for (int k = 0; k < T; ++k) {
        int32_t* out = acc + k * ldc + row0;
        if (r0 == 0 && r1 == kTL2TileRows) {
            for (int v = 0; v < 4; ++v) {
                __m256i x = _mm256_load_si256(reinterpret_cast<const __m256i*>(s32[k] + 8 * v));
                __m256i* o = reinterpret_cast<__m256i*>(out + 8 * v);
                if (!first) x = _mm256_add_epi32(x, _mm256_loadu_si256(o));
                _mm256_storeu_si256(o, x);
            }
        } else {
            for (int64_t r = r0; r < r1; ++r) out[r] = first ? s32[k][r] : out[r] + s32[k][r];
        }
    }
}

template <int T>
void token_tile(const uint8_t* packed, int64_t K, int64_t N, int64_t n0, int64_t n1,
                const int8_t* q, int64_t ldq, int32_t* acc, int64_t ldc) {
    const int64_t nb = tl2::blocks(K), rb = nb * kTL2BlockBytes;
    const int64_t chunk = std::max<int64_t>(1, kTableBytes / (T * kTL2BlockGroups * kTable));
    const int64_t tstride = chunk * kTL2BlockGroups * kTable;
    auto* tab = static_cast<uint8_t*>(tl_tables.get(size_t(T * tstride)));
    const int64_t t1 = (n1 + kTL2TileRows - 1) / kTL2TileRows;
    for (int64_t b0 = 0; b0 < nb; b0 += chunk) {
        const int64_t b1 = std::min(nb, b0 + chunk);
        for (int k = 0; k < T; ++k)
            build_tables(q + k * ldq, K, b0 * kTL2BlockGroups, b1 * kTL2BlockGroups, tab + k * tstride);
        for (int64_t t = n0 / kTL2TileRows; t < t1; ++t)
            tile_pass<T>(packed, rb, t, tl2::tile_rows(N, t), b0, b1, tab, tstride, n0, n1, b0 == 0,
                         acc, ldc);
    }
}

void ternary_tl2_avx2(const uint8_t* packed, int64_t K, int64_t N, int64_t n0, int64_t n1,
                      const int8_t* q, int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    if (n0 >= n1) return;
    for (int64_t m = 0; m < M; m += kMaxTokens) {
        const int8_t* qm = q + m * ldq;
        int32_t* am = acc + m * ldc;
        switch (std::min<int64_t>(kMaxTokens, M - m)) {
            case 1: token_tile<1>(packed, K, N, n0, n1, qm, ldq, am, ldc); break;
            case 2: token_tile<2>(packed, K, N, n0, n1, qm, ldq, am, ldc); break;
            case 3: token_tile<3>(packed, K, N, n0, n1, qm, ldq, am, ldc); break;
            default: token_tile<4>(packed, K, N, n0, n1, qm, ldq, am, ldc); break;
        }
    }
}

}  // namespace

namespace tl2 {
Kernel avx2_kernel() { return ternary_tl2_avx2; }
}  // namespace tl2
}  // namespace ternary
