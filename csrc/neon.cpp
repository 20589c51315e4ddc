// NEON kernels (aarch64, where NEON is baseline): ternary T2/T1 matmul by select + add, and
// quantize_row, and the Q4 lm_head rows. Layouts: ternary.h. f16_rows and int8_rows stay the
// reference's.
//
// Multiplication-free core, per 16 weights of a row against 16 int8 activations x:
//   bit masks -> byte masks: the 64-bit mask duplicated into a register, tbl puts byte i/8 in
//   lane i, vtst with the lane's bit gives 0x00 / 0xFF
//   d   = (x ^ minus) & nonzero   -> x (+1), ~x = -x - 1 (-1, never overflows), 0
//   acc = vpadal(acc, d)          (pairwise widening add into int16, flushed to int32 with vpadal
//                                  long before 127 of them could overflow)
// Each -1 weight leaves the sum one short: every output adds its row's count of -1 weights.
// GEMV tokens without -128 (all that quantize_rows makes) select -x instead and need no count.
// T1 digits 0..3 come from a 256-entry table (tbl + 3 tbx over 4 x 64 bytes), digit 4 from
// compares; every byte value decodes like the reference.
// GEMV (M < kGemmMinTokens): masks expanded per token. GEMM: a tile of 2 rows is expanded once
// into byte masks (minus, nonzero), then every token costs eor, and, vpadal per 16 weights.
// K not a multiple of 64: the last plane's activations come from a zero-padded copy, so q is
// never read past K.
#include <arm_neon.h>

#include <cstdlib>
#include <cstring>

#include "quantize_tail.h"
#include "ternary.h"
#include "tl2.h"

namespace ternary {
namespace {

constexpr int64_t kGemmMinTokens = 2;
constexpr int kRows = 2;              // rows per pass (T2 GEMV, GEMM tiles)
constexpr int kTokens = 4;            // tokens per GEMM tile: 2x4 int16 + 2x4 int32 accumulators
constexpr int64_t kFlushPlanes = 16;  // GEMM: 4 vpadal of |x| <= 256 per plane: 64 < 127

// tbl indices that put byte (2j + i/8) of a duplicated 64-bit mask in lane i (j = quarter).
alignas(16) constexpr uint8_t kExpandIdx[4][16] = {{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
                                                   {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
                                                   {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},
                                                   {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7}};
alignas(16) constexpr uint8_t kBitSel[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};

struct Expander {
    uint8x16_t idx[4], bits;
    Expander() {
        for (int j = 0; j < 4; ++j) idx[j] = vld1q_u8(kExpandIdx[j]);
        bits = vld1q_u8(kBitSel);
    }
    // Byte masks of weights 16j .. 16j+15 of a plane from its 64-bit mask.
    inline uint8x16_t quarter(uint8x16_t dup, int j) const { return vtstq_u8(vqtbl1q_u8(dup, idx[j]), bits); }
};

inline uint64_t load_u64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline uint8x16_t dup_mask(uint64_t m) { return vreinterpretq_u8_u64(vdupq_n_u64(m)); }

// (x ^ minus) & nonzero, added pairwise into int16 lanes.
inline int16x8_t accumulate(int16x8_t acc, int8x16_t x, uint8x16_t minus, uint8x16_t nonzero) {
    const int8x16_t d = vandq_s8(veorq_s8(x, vreinterpretq_s8_u8(minus)), vreinterpretq_s8_u8(nonzero));
    return vpadalq_s8(acc, d);
}

inline int32_t t2_minus_count(const uint8_t* w, size_t rb) {
    int32_t c = 0;
    for (size_t b = 0; b < rb; b += kT2BlockBytes)
        for (int s = 0; s < 4; ++s) c += __builtin_popcountll(load_u64(w + b + 32 + 8 * s) & ~load_u64(w + b + 8 * s));
    return c;
}

// ---- T1 decoding -------------------------------------------------------------------------------
// lo[c]: bit 2i = digit i of c is +1, bit 2i + 1 = digit i is -1, for digits i = 0..3 (all 256
// byte values, by the reference's base-3 rule). Digit 4 of c is (c / 81) % 3: -1 for c < 81 and
// for the invalid codes c >= 243, +1 for 162 <= c < 243.
struct T1Table {
    alignas(16) uint8_t lo[256];
};

constexpr T1Table make_t1_table() {
    T1Table t{};
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

constexpr T1Table kT1Table = make_t1_table();

struct T1Decoder {
    uint8x16x4_t t[4];
    T1Decoder() {
        for (int i = 0; i < 4; ++i) t[i] = vld1q_u8_x4(kT1Table.lo + 64 * i);
    }
    // 16 codes -> masks of their 5 digits (minus, nonzero).
    inline void decode(uint8x16_t c, uint8x16_t* minus, uint8x16_t* nonzero) const {
        const uint8x16_t k64 = vdupq_n_u8(64);
        uint8x16_t idx = c, lo = vqtbl4q_u8(t[0], idx);
        idx = vsubq_u8(idx, k64);  // out-of-range indices (wrapped below 0) leave lanes as they are
        lo = vqtbx4q_u8(lo, t[1], idx);
        idx = vsubq_u8(idx, k64);
        lo = vqtbx4q_u8(lo, t[2], idx);
        idx = vsubq_u8(idx, k64);
        lo = vqtbx4q_u8(lo, t[3], idx);
        for (int i = 0; i < 4; ++i) {
            minus[i] = vtstq_u8(lo, vdupq_n_u8(uint8_t(2 << (2 * i))));
            nonzero[i] = vtstq_u8(lo, vdupq_n_u8(uint8_t(3 << (2 * i))));
        }
        const uint8x16_t below81 = vcltq_u8(c, vdupq_n_u8(81));
        minus[4] = vorrq_u8(below81, vcgeq_u8(c, vdupq_n_u8(243)));
        nonzero[4] = vorrq_u8(below81, vcgeq_u8(c, vdupq_n_u8(162)));
    }
};

// ---- GEMV path: rows n .. n+R-1, every token m < M ----------------------------------------------
// A token without -128 (quantize_rows never makes one) selects -x for a -1 weight, which cannot
// overflow, and needs no -1 count; a token with -128 takes ~x and adds the rows' -1 counts.

inline bool has_int8_min(const int8_t* a, int64_t K) {
    const int8x16_t lowest = vdupq_n_s8(-128);
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
        if (vmaxvq_u8(vceqq_s8(vld1q_s8(a + k), lowest))) return true;
    for (; k < K; ++k)
        if (a[k] == -128) return true;
    return false;
}

// x where w = +1, -x (exact: ~x) where w = -1, 0 where w = 0; added pairwise into int16.
template <bool kExact>
inline int16x8_t accumulate_token(int16x8_t acc, int8x16_t x, int8x16_t nx, uint8x16_t minus,
                                  uint8x16_t nonzero) {
    if (kExact) return accumulate(acc, x, minus, nonzero);
    return vpadalq_s8(acc, vandq_s8(vbslq_s8(minus, nx, x), vreinterpretq_s8_u8(nonzero)));
}

template <int R, bool kExact>
void t2_gemv_token(const uint8_t* const* w, size_t rb, int64_t K, const int8_t* a, const int32_t* corr,
                   int32_t* out) {
    const int64_t planes = (K + 63) / 64;
    const Expander ex;
    alignas(16) int8_t tail[64];
    int32x4_t s32[R];
    int16x8_t s16[R][4];  // one per quarter: independent dependency chains
    for (int r = 0; r < R; ++r) {
        s32[r] = vdupq_n_s32(0);
        for (int j = 0; j < 4; ++j) s16[r][j] = vdupq_n_s16(0);
    }
    for (int64_t p = 0; p < planes; ++p) {
        const int8_t* src = a + 64 * p;
        if (64 * (p + 1) > K) {
            std::memset(tail, 0, sizeof tail);
            std::memcpy(tail, src, size_t(K - 64 * p));
            src = tail;
        }
        if (p % 4 == 0)  // the block two passes on, into L2 (short interleaved row streams)
            for (int r = 0; r < R; ++r) __builtin_prefetch(w[r] + (p / 4) * kT2BlockBytes + 2 * R * rb, 0, 2);
        int8x16_t x[4], nx[4];
        for (int j = 0; j < 4; ++j) {
            x[j] = vld1q_s8(src + 16 * j);
            nx[j] = kExact ? x[j] : vnegq_s8(x[j]);
        }
        for (int r = 0; r < R; ++r) {
            const uint8_t* blk = w[r] + (p / 4) * kT2BlockBytes + 8 * (p % 4);
            const uint64_t plus = load_u64(blk), minus = load_u64(blk + 32) & ~plus, nonzero = plus | minus;
            const uint8x16_t dm = dup_mask(minus), dz = dup_mask(nonzero);
            for (int j = 0; j < 4; ++j)
                s16[r][j] = accumulate_token<kExact>(s16[r][j], x[j], nx[j], ex.quarter(dm, j), ex.quarter(dz, j));
        }
        if (p % 64 == 63) {  // one vpadal of |x| <= 256 per plane and accumulator
            for (int r = 0; r < R; ++r)
                for (int j = 0; j < 4; ++j) {
                    s32[r] = vpadalq_s16(s32[r], s16[r][j]);
                    s16[r][j] = vdupq_n_s16(0);
                }
        }
    }
    for (int r = 0; r < R; ++r) {
        for (int j = 0; j < 4; ++j) s32[r] = vpadalq_s16(s32[r], s16[r][j]);
        out[r] = vaddvq_s32(s32[r]) + (kExact ? corr[r] : 0);
    }
}

template <int R>
void t2_gemv_rows(const uint8_t* packed, size_t rb, int64_t K, int64_t n, const int8_t* q,
                  int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    const uint8_t* w[R];
    int32_t corr[R] = {};
    bool counted = false;
    for (int r = 0; r < R; ++r) w[r] = packed + (n + r) * int64_t(rb);
    for (int64_t m = 0; m < M; ++m) {
        const int8_t* a = q + m * ldq;
        if (has_int8_min(a, K)) {
            if (!counted)
                for (int r = 0; r < R; ++r) corr[r] = t2_minus_count(w[r], rb);
            counted = true;
            t2_gemv_token<R, true>(w, rb, K, a, corr, acc + m * ldc + n);
        } else {
            t2_gemv_token<R, false>(w, rb, K, a, corr, acc + m * ldc + n);
        }
    }
}

template <bool kExact>
void t1_gemv_token(const T1Decoder& dec, const uint8_t* w, int64_t K, const int8_t* a, int32_t* out) {
    const int64_t nblocks = (K + kT1BlockWeights - 1) / kT1BlockWeights;
    alignas(16) int8_t tail[kT1BlockWeights];
    int32x4_t s32 = vdupq_n_s32(0);
    uint32x4_t minus_count = vdupq_n_u32(0);
    for (int64_t b = 0; b < nblocks; ++b) {
        const int8_t* ab = a + b * kT1BlockWeights;
        if (kT1BlockWeights * (b + 1) > K) {
            std::memset(tail, 0, sizeof tail);
            std::memcpy(tail, ab, size_t(K - kT1BlockWeights * b));
            ab = tail;
        }
        int16x8_t s16[2] = {vdupq_n_s16(0), vdupq_n_s16(0)};  // 10 vpadal each per block
        uint8x16_t cnt = vdupq_n_u8(0);                      // <= 20 per lane per block
        for (int j = 0; j < 4; ++j) {
            uint8x16_t mi[5], nz[5];
            dec.decode(vld1q_u8(w + b * kT1BlockBytes + 16 * j), mi, nz);
            for (int i = 0; i < 5; ++i) {
                const int8x16_t x = vld1q_s8(ab + 64 * i + 16 * j);
                s16[i & 1] = accumulate_token<kExact>(s16[i & 1], x, kExact ? x : vnegq_s8(x), mi[i], nz[i]);
                if (kExact) cnt = vsubq_u8(cnt, mi[i]);  // 0xFF = -1: one more -1 weight
            }
        }
        s32 = vpadalq_s16(vpadalq_s16(s32, s16[0]), s16[1]);
        // Padding codes are weight 0, so counting whole blocks is exact.
        if (kExact) minus_count = vpadalq_u16(minus_count, vpaddlq_u8(cnt));
    }
    *out = vaddvq_s32(s32) + (kExact ? int32_t(vaddvq_u32(minus_count)) : 0);
}

void t1_gemv_row(const T1Decoder& dec, const uint8_t* packed, size_t rb, int64_t K, int64_t n,
                 const int8_t* q, int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    const uint8_t* w = packed + n * int64_t(rb);
    for (int64_t m = 0; m < M; ++m) {
        const int8_t* a = q + m * ldq;
        if (has_int8_min(a, K)) t1_gemv_token<true>(dec, w, K, a, acc + m * ldc + n);
        else t1_gemv_token<false>(dec, w, K, a, acc + m * ldc + n);
    }
}

// ---- GEMM path: a tile of R rows expanded to byte masks, reused by every token ----------------

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

thread_local Scratch tl_scratch;

// e: [planes][R][4 quarters][minus, nonzero] vectors.
inline size_t expanded_index(int64_t p, int R, int r, int j) { return size_t(((p * R + r) * 4 + j) * 2); }

template <int R>
void t2_expand(const uint8_t* packed, size_t rb, int64_t planes, int64_t n, uint8x16_t* e, int32_t* corr) {
    const Expander ex;
    for (int r = 0; r < R; ++r) {
        const uint8_t* w = packed + (n + r) * int64_t(rb);
        corr[r] = t2_minus_count(w, rb);
        for (int64_t p = 0; p < planes; ++p) {
            const uint8_t* blk = w + (p / 4) * kT2BlockBytes + 8 * (p % 4);
            const uint64_t plus = load_u64(blk), minus = load_u64(blk + 32) & ~plus, nonzero = plus | minus;
            const uint8x16_t dm = dup_mask(minus), dz = dup_mask(nonzero);
            for (int j = 0; j < 4; ++j) {
                e[expanded_index(p, R, r, j)] = ex.quarter(dm, j);
                e[expanded_index(p, R, r, j) + 1] = ex.quarter(dz, j);
            }
        }
    }
}

template <int R>
void t1_expand(const T1Decoder& dec, const uint8_t* packed, size_t rb, int64_t planes, int64_t n,
               uint8x16_t* e, int32_t* corr) {
    const int64_t nblocks = (planes + 4) / 5;
    for (int r = 0; r < R; ++r) {
        const uint8_t* w = packed + (n + r) * int64_t(rb);
        uint32x4_t minus_count = vdupq_n_u32(0);
        for (int64_t b = 0; b < nblocks; ++b) {
            uint8x16_t cnt = vdupq_n_u8(0);
            for (int j = 0; j < 4; ++j) {
                uint8x16_t mi[5], nz[5];
                dec.decode(vld1q_u8(w + b * kT1BlockBytes + 16 * j), mi, nz);
                for (int i = 0; i < 5; ++i) {
                    cnt = vsubq_u8(cnt, mi[i]);
                    const int64_t p = 5 * b + i;
                    if (p >= planes) continue;
                    e[expanded_index(p, R, r, j)] = mi[i];
                    e[expanded_index(p, R, r, j) + 1] = nz[i];
                }
            }
            minus_count = vpadalq_u16(minus_count, vpaddlq_u8(cnt));
        }
        corr[r] = int32_t(vaddvq_u32(minus_count));
    }
}

// acc rows n..n+R-1 for tokens m0..m0+T-1 from the expanded tile e. tail: [T][64] zero-padded
// copies of the tokens' last plane.
template <int R, int T>
void gemm_tile(const uint8x16_t* e, int64_t planes, const int8_t* q, int64_t ldq, const int8_t* tail,
               const int32_t* corr, int32_t* out, int64_t ldc) {
    int16x8_t s16[T][R];
    int32x4_t s32[T][R];
    for (int t = 0; t < T; ++t)
        for (int r = 0; r < R; ++r) {
            s16[t][r] = vdupq_n_s16(0);
            s32[t][r] = vdupq_n_s32(0);
        }
    for (int64_t p = 0; p < planes; ++p) {
        for (int j = 0; j < 4; ++j) {
            uint8x16_t mi[R], nz[R];
            for (int r = 0; r < R; ++r) {
                mi[r] = e[expanded_index(p, R, r, j)];
                nz[r] = e[expanded_index(p, R, r, j) + 1];
            }
            for (int t = 0; t < T; ++t) {
                const int8_t* a = p + 1 < planes ? q + t * ldq + 64 * p : tail + 64 * t;
                const int8x16_t x = vld1q_s8(a + 16 * j);
                for (int r = 0; r < R; ++r) s16[t][r] = accumulate(s16[t][r], x, mi[r], nz[r]);
            }
        }
        if (p % kFlushPlanes == kFlushPlanes - 1) {
            for (int t = 0; t < T; ++t)
                for (int r = 0; r < R; ++r) {
                    s32[t][r] = vpadalq_s16(s32[t][r], s16[t][r]);
                    s16[t][r] = vdupq_n_s16(0);
                }
        }
    }
    for (int t = 0; t < T; ++t)
        for (int r = 0; r < R; ++r)
            out[t * ldc + r] = vaddvq_s32(vpadalq_s16(s32[t][r], s16[t][r])) + corr[r];
}

template <int R, int T>
void gemm_tokens(const uint8x16_t* e, int64_t planes, int64_t K, const int8_t* q, int64_t ldq,
                 const int32_t* corr, int32_t* out, int64_t ldc) {
    alignas(16) int8_t tail[T * 64] = {};
    const int64_t last = 64 * (planes - 1);
    for (int t = 0; t < T; ++t) std::memcpy(tail + 64 * t, q + t * ldq + last, size_t(K - last));
    gemm_tile<R, T>(e, planes, q, ldq, tail, corr, out, ldc);
}

template <int R>
void gemm_rows(const uint8x16_t* e, int64_t planes, int64_t K, const int8_t* q, int64_t ldq,
               int64_t M, const int32_t* corr, int32_t* acc, int64_t ldc) {
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
void ternary_rows(Format fmt, const T1Decoder& dec, const uint8_t* packed, size_t rb, int64_t K,
                  int64_t n, const int8_t* q, int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    if (M < kGemmMinTokens) {
        if (fmt == Format::T2) {
            t2_gemv_rows<R>(packed, rb, K, n, q, ldq, M, acc, ldc);
        } else {
            for (int r = 0; r < R; ++r) t1_gemv_row(dec, packed, rb, K, n + r, q, ldq, M, acc, ldc);
        }
        return;
    }
    const int64_t planes = (K + 63) / 64;
    auto* e = static_cast<uint8x16_t*>(tl_scratch.get(expanded_index(planes, R, 0, 0) * sizeof(uint8x16_t)));
    int32_t corr[R];
    if (fmt == Format::T2) t2_expand<R>(packed, rb, planes, n, e, corr);
    else t1_expand<R>(dec, packed, rb, planes, n, e, corr);
    gemm_rows<R>(e, planes, K, q, ldq, M, corr, acc + n, ldc);
}

void ternary_any(Format fmt, const uint8_t* packed, int64_t K, int64_t n0, int64_t n1,
                 const int8_t* q, int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    const size_t rb = row_bytes(fmt, K);
    const T1Decoder dec;
    int64_t n = n0;
    for (; n + kRows <= n1; n += kRows) ternary_rows<kRows>(fmt, dec, packed, rb, K, n, q, ldq, M, acc, ldc);
    if (n < n1) ternary_rows<1>(fmt, dec, packed, rb, K, n, q, ldq, M, acc, ldc);
}

void ternary_t2_neon(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                     int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    ternary_any(Format::T2, packed, K, n0, n1, q, ldq, M, acc, ldc);
}

void ternary_t1_neon(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                     int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    ternary_any(Format::T1, packed, K, n0, n1, q, ldq, M, acc, ldc);
}

// ---- quantize_row --------------------------------------------------------------------------------
// Same operations as quantize_row_ref, 4 lanes at a time; compares and selects instead of
// vmax/vmin where NaN matters, so NaN behaves as in std::max/std::min: ignored by the absmax,
// -128 after the clamp. vrndnq rounds half to even.
float quantize_row_neon(const float* x, int64_t K, int8_t* q) {
    float32x4_t vmax = vdupq_n_f32(0.f);
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
        const float32x4_t a = vabsq_f32(vld1q_f32(x + k));
        vmax = vbslq_f32(vcltq_f32(vmax, a), a, vmax);  // std::max(vmax, a)
    }
    float amax = vmaxvq_f32(vmax);
    amax = absmax_tail(x, k, K, amax);
    const float scale = 127.f / (amax < 1e-5f ? 1e-5f : amax);
    const float32x4_t vs = vdupq_n_f32(scale), lo = vdupq_n_f32(-128.f), hi = vdupq_n_f32(127.f);
    for (k = 0; k + 8 <= K; k += 8) {
        int32x4_t i[2];
        for (int h = 0; h < 2; ++h) {
            const float32x4_t r = vrndnq_f32(vmulq_f32(vld1q_f32(x + k + 4 * h), vs));
            const float32x4_t c = vbslq_f32(vcltq_f32(lo, r), r, lo);  // std::max(-128.f, r)
            i[h] = vcvtq_s32_f32(vminq_f32(c, hi));
        }
        vst1_s8(q + k, vqmovn_s16(vcombine_s16(vqmovn_s32(i[0]), vqmovn_s32(i[1]))));
    }
    quantize_tail(x, k, K, scale, q);
    return scale;
}

// Q4 lm_head rows (contract: KernelTable::q4_rows). Per group of 128 and row: 4 x 16 bytes of
// nibbles u = w + 8; widening multiply-accumulates into int16 (16 products per lane, at most
// 16 * 15 * 128 = 30720), then one int16 x sub-scale multiply-accumulate into int32. Each row
// ends by subtracting 8 * sum_g sub[g] * qsum[g]. Integer throughout: the reference's int32.
int32_t q4_row_neon(const uint8_t* w, const int16_t* sub, int64_t G, const int8_t* a,
                    const int16_t* qsum) {
    const uint8x16_t nib = vdupq_n_u8(0x0F);
    int32x4_t acc = vdupq_n_s32(0);
    uint32_t offset = 0;
    for (int64_t g = 0; g < G; ++g) {
        const uint8_t* p = w + g * kQ4GroupBytes;
        const int8_t* ag = a + g * kQ4Group;
        int16x8_t s = vdupq_n_s16(0);
        for (int i = 0; i < 4; ++i) {
            const uint8x16_t b = vld1q_u8(p + 16 * i);
            const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(b, nib));   // weights 16i ..
            const int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));   // weights 64 + 16i ..
            const int8x16_t a_lo = vld1q_s8(ag + 16 * i), a_hi = vld1q_s8(ag + 64 + 16 * i);
            s = vmlal_s8(s, vget_low_s8(lo), vget_low_s8(a_lo));
            s = vmlal_high_s8(s, lo, a_lo);
            s = vmlal_s8(s, vget_low_s8(hi), vget_low_s8(a_hi));
            s = vmlal_high_s8(s, hi, a_hi);
        }
        acc = vmlal_n_s16(acc, vget_low_s16(s), sub[g]);
        acc = vmlal_high_n_s16(acc, s, sub[g]);
        offset += uint32_t(int32_t(sub[g]) * qsum[g]);
    }
    return int32_t(uint32_t(vaddvq_s32(acc)) - 8u * offset);
}

void q4_rows_neon(const uint8_t* packed, const int16_t* sub, int64_t K, int64_t n0, int64_t n1,
                  const int8_t* q, const int16_t* qsum, int64_t M, int32_t* acc, int64_t ldc) {
    const int64_t G = K / kQ4Group;
    for (int64_t n = n0; n < n1; ++n)
        for (int64_t m = 0; m < M; ++m)
            acc[m * ldc + n] = q4_row_neon(packed + n * G * kQ4GroupBytes, sub + n * G, G, q + m * K,
                                           qsum + m * G);
}

}  // namespace

const KernelTable& neon_kernels() {
    static const KernelTable t = [] {
        KernelTable k = ref_kernels();
        k.name = "neon";
        k.ternary_t2 = ternary_t2_neon;
        k.ternary_t1 = ternary_t1_neon;
        k.ternary_tl2 = tl2::neon_kernel();  // tl2_neon.cpp
        k.ternary_tl1 = ternary_tl1_neon;  // tl1_neon.cpp
        k.quantize_row = quantize_row_neon;
        k.q4_rows = q4_rows_neon;
        return k;
    }();
    return t;
}

}  // namespace ternary
