// TL2 kernel for NEON (aarch64). Layout: ternary.h.
//
// Per token and group of 3 activations the full 32-entry int16 table T[c] = sum_d w_d(c) a_d
// (tl2::weight_of; adds and subtracts only), stored as its 32 low bytes then its 32 high bytes.
// For 8 rows (a quarter of a tile, one uint16x8 of code words x):
//   c = x & 31;  lo = vqtbl2q(LO, c)        -> low byte of T[c] (word's high byte: LO[0] = 0)
//                hi = vqtbl2q(HI, c << 8)   -> high byte << 8 (low byte: HI[0] = 0)
//   acc16 += lo | hi
// T[0] = 0 (code 0 is three zero weights), which is what makes the zero index bytes harmless.
// The code extraction (vshr, or vshr + vsli where a code straddles two words), c and c << 8 are
// shared by the tokens of a token tile. |T| <= 384: int16 sums widen every kFlushBlocks blocks.
#include <arm_neon.h>

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
constexpr int kTable = 64;       // bytes per table: LO[32], HI[32]

struct Lanes {
    int16_t w[3][2][32];  // [digit d][+1 / -1][code c]: -1 (all ones) where weight d of c is +-1
};
Lanes make_lanes() {
    Lanes t{};
    for (int c = 0; c < 32; ++c)
        for (int d = 0; d < 3; ++d) {
            const int w = tl2::weight_of(c, d);
            if (w > 0) t.w[d][0][c] = -1;
            if (w < 0) t.w[d][1][c] = -1;
        }
    return t;
}
const Lanes kLanes = make_lanes();

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

inline int16x8_t sel(int16x8_t x, int d, int s, int v) {
    return vandq_s16(x, vld1q_s16(kLanes.w[d][s] + 8 * v));
}

// Tables of groups [g0, g1) of token a into dst [(g1 - g0)][64 bytes].
void build_tables(const int8_t* a, int64_t K, int64_t g0, int64_t g1, uint8_t* dst) {
    for (int64_t g = g0; g < g1; ++g) {
        const int64_t k = 3 * g;
        const int16x8_t x0 = vdupq_n_s16(k < K ? a[k] : 0), x1 = vdupq_n_s16(k + 1 < K ? a[k + 1] : 0),
                        x2 = vdupq_n_s16(k + 2 < K ? a[k + 2] : 0);
        uint8x16_t b[4];
        for (int v = 0; v < 4; ++v) {
            int16x8_t t = vsubq_s16(sel(x0, 0, 0, v), sel(x0, 0, 1, v));
            t = vaddq_s16(t, vsubq_s16(sel(x1, 1, 0, v), sel(x1, 1, 1, v)));
            t = vaddq_s16(t, vsubq_s16(sel(x2, 2, 0, v), sel(x2, 2, 1, v)));
            b[v] = vreinterpretq_u8_s16(t);  // entries 8v .. 8v + 7
        }
        uint8_t* out = dst + (g - g0) * kTable;
        vst1q_u8(out, vuzp1q_u8(b[0], b[1]));       // low bytes of entries 0..15
        vst1q_u8(out + 16, vuzp1q_u8(b[2], b[3]));  // 16..31
        vst1q_u8(out + 32, vuzp2q_u8(b[0], b[1]));  // high bytes
        vst1q_u8(out + 48, vuzp2q_u8(b[2], b[3]));
    }
}

template <int i>
inline uint16x8_t code(const uint16x8_t* w) {
    constexpr int bit = 5 * i, j = bit / 16, s = bit % 16;
    if constexpr (s == 0) return w[j];
    else if constexpr (s <= 11) return vshrq_n_u16(w[j], s);
    else return vsliq_n_u16(vshrq_n_u16(w[j], s), w[j + 1], 16 - s);
}

template <int T, int i>
inline void group(const uint16x8_t (*w)[kTL2BlockWords], const uint8_t* tb, int64_t tstride,
                  int16x8_t (*s)[4]) {
    uint8x16_t c[4], ch[4];
    for (int v = 0; v < 4; ++v) {
        const uint16x8_t x = vandq_u16(code<i>(w[v]), vdupq_n_u16(31));
        c[v] = vreinterpretq_u8_u16(x);
        ch[v] = vreinterpretq_u8_u16(vshlq_n_u16(x, 8));
    }
    for (int k = 0; k < T; ++k) {
        const uint8_t* tp = tb + k * tstride + i * kTable;
        const uint8x16x2_t lo = {{vld1q_u8(tp), vld1q_u8(tp + 16)}};
        const uint8x16x2_t hi = {{vld1q_u8(tp + 32), vld1q_u8(tp + 48)}};
        for (int v = 0; v < 4; ++v) {
            const uint8x16_t t = vorrq_u8(vqtbl2q_u8(lo, c[v]), vqtbl2q_u8(hi, ch[v]));
            s[k][v] = vaddq_s16(s[k][v], vreinterpretq_s16_u8(t));
        }
    }
}

template <int T, int... I>
inline void block(const uint16x8_t (*w)[kTL2BlockWords], const uint8_t* tb, int64_t tstride,
                  int16x8_t (*s)[4], std::integer_sequence<int, I...>) {
    (group<T, I>(w, tb, tstride, s), ...);
}

template <int T>
__attribute__((noinline)) void tile_pass(const uint8_t* packed, int64_t rb, int64_t t, int64_t nr,
                                         int64_t b0, int64_t b1, const uint8_t* tab,
                                         int64_t tstride, int64_t n0, int64_t n1, bool first,
                                         int32_t* acc, int64_t ldc) {
    const uint8_t* base = packed + t * kTL2TileRows * rb;
    const int64_t vstride = 2 * nr;
    int32_t s32[T][32] = {};
    int16x8_t s[T][4];
    for (int k = 0; k < T; ++k)
        for (int v = 0; v < 4; ++v) s[k][v] = vdupq_n_s16(0);
    auto flush = [&] {
        for (int k = 0; k < T; ++k)
            for (int v = 0; v < 4; ++v) {
                int32_t* d = s32[k] + 8 * v;
                vst1q_s32(d, vaddq_s32(vld1q_s32(d), vmovl_s16(vget_low_s16(s[k][v]))));
                vst1q_s32(d + 4, vaddq_s32(vld1q_s32(d + 4), vmovl_high_s16(s[k][v])));
                s[k][v] = vdupq_n_s16(0);
            }
    };
    uint16_t part[kTL2BlockWords][32] = {};  // a short tile's block, zero-padded
    int pending = 0;
    for (int64_t b = b0; b < b1; ++b) {
        const uint8_t* wp = base + b * kTL2BlockWords * vstride;
        if (nr < kTL2TileRows) {
            for (int j = 0; j < kTL2BlockWords; ++j) std::memcpy(part[j], wp + j * vstride, size_t(vstride));
            wp = reinterpret_cast<const uint8_t*>(part);
        }
        uint16x8_t w[4][kTL2BlockWords];
        for (int v = 0; v < 4; ++v)
            for (int j = 0; j < kTL2BlockWords; ++j)
                w[v][j] = vld1q_u16(reinterpret_cast<const uint16_t*>(wp + 64 * j + 16 * v));
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
        for (int64_t r = r0; r < r1; ++r) out[r] = first ? s32[k][r] : out[r] + s32[k][r];
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

void ternary_tl2_neon(const uint8_t* packed, int64_t K, int64_t N, int64_t n0, int64_t n1,
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
Kernel neon_kernel() { return ternary_tl2_neon; }
}  // namespace tl2
}  // namespace ternary
