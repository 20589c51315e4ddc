// TL1 kernel, NEON (AArch64). Layout: ternary.h; the scheme is tl1_avx512.cpp's with one pair
// per 128-bit register: 8 bytes of a unit (one pair x 16 rows) decode by a tbl lookup of the
// codes into index bytes x (slot p, or >= 16 for a (0, 0) pair), zipped with x ^ 8 into index
// words, and one tbl of the pair's 16-byte table gives 8 rows' exact int16 sums. The 4 pairs of
// a group add into the same accumulators, so sums stay int16 for kChunkGroups groups
// (4 x 16 x 256 < 2^15). Tables are built by the portable tl1::build_tables.
#include <arm_neon.h>

#include <algorithm>

#include "tl1.h"

namespace ternary {
namespace {

constexpr int64_t kChunkGroups = 16;
constexpr int kTokens = 4;
constexpr int64_t kTabBytes = kChunkGroups * 64;

inline void put8(int16x8_t a, int32_t* o, bool first) {
    int32x4_t l = vmovl_s16(vget_low_s16(a)), h = vmovl_high_s16(a);
    if (!first) {
        l = vaddq_s32(l, vld1q_s32(o));
        h = vaddq_s32(h, vld1q_s32(o + 4));
    }
    vst1q_s32(o, l);
    vst1q_s32(o + 4, h);
}

template <int MT>
void tile_chunk(const uint8_t* unit, int64_t ng, const uint8_t* tab, int32_t* out, int64_t ldc,
                bool first) {
    static const uint8_t kDec[16] = {0, 1, 2, 3, 4, 5, 6, 7, 255, 255, 255, 255, 255, 255, 255, 255};
    const uint8x16_t dec = vld1q_u8(kDec);
    const uint8x8_t low4 = vdup_n_u8(15), eight = vdup_n_u8(8);
    int16x8_t lo[MT], hi[MT];
    for (int m = 0; m < MT; ++m) lo[m] = hi[m] = vdupq_n_s16(0);
    for (int64_t g = 0; g < ng; ++g) {
        for (int L = 0; L < 4; ++L) {
            const uint8x8_t b = vld1_u8(unit + 32 * g + 8 * L);
            const uint8x8_t x0 = vqtbl1_u8(dec, vand_u8(b, low4)), x1 = vqtbl1_u8(dec, vshr_n_u8(b, 4));
            const uint8x16_t z0 = vcombine_u8(vzip1_u8(x0, veor_u8(x0, eight)), vzip2_u8(x0, veor_u8(x0, eight)));
            const uint8x16_t z1 = vcombine_u8(vzip1_u8(x1, veor_u8(x1, eight)), vzip2_u8(x1, veor_u8(x1, eight)));
            for (int m = 0; m < MT; ++m) {
                const uint8x16_t t = vld1q_u8(tab + m * kTabBytes + 64 * g + 16 * L);
                lo[m] = vaddq_s16(lo[m], vreinterpretq_s16_u8(vqtbl1q_u8(t, z0)));
                hi[m] = vaddq_s16(hi[m], vreinterpretq_s16_u8(vqtbl1q_u8(t, z1)));
            }
        }
    }
    for (int m = 0; m < MT; ++m) {
        put8(lo[m], out + m * ldc, first);
        put8(hi[m], out + m * ldc + 8, first);
    }
}

}  // namespace

void ternary_tl1_neon(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
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
                int32_t* out = acc + m0 * ldc + kTL1TileRows * t;
                const bool first = c0 == 0;
                switch (mt) {
                    case 1: tile_chunk<1>(unit, ng, tab, out, ldc, first); break;
                    case 2: tile_chunk<2>(unit, ng, tab, out, ldc, first); break;
                    case 3: tile_chunk<3>(unit, ng, tab, out, ldc, first); break;
                    default: tile_chunk<4>(unit, ng, tab, out, ldc, first); break;
                }
            }
        }
    }
}

}  // namespace ternary
