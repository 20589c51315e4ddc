// TL1 (table lookup, 2 bits/weight): the layout's constants and the scalar pieces every ISA's
// kernel shares (code lookup, the per-pair lookup tables, the row-range reference). The layout
// itself is documented in ternary.h. Everything here has internal linkage (an anonymous
// namespace), so a copy compiled with ISA flags never stands in for a portable one at link time.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "ternary.h"

namespace ternary {
namespace tl1 {
namespace {

constexpr int kPatterns = 8;  // nonzero (w0, w1) patterns; (0, 0) is any code with bit 3 set
constexpr uint8_t kZeroCode = 8;
// Pattern p (code bits 0..2) -> (w0, w1): the 3x3 grid (w0 + 1) * 3 + (w1 + 1) without its
// centre (0, 0), in order. Pattern 7 - p is the negation of pattern p.
constexpr int8_t kW0[kPatterns] = {-1, -1, -1, 0, 0, 1, 1, 1};
constexpr int8_t kW1[kPatterns] = {-1, 0, 1, -1, 1, -1, 0, 1};

inline uint8_t encode(int w0, int w1) {
    if (w0 == 0 && w1 == 0) return kZeroCode;
    const int c = (w0 + 1) * 3 + (w1 + 1);
    return uint8_t(c < 4 ? c : c - 1);
}

inline int64_t groups(int64_t K) { return (K + kTL1GroupWeights - 1) / kTL1GroupWeights; }

// Code (low 4 bits) of pair j of row n in a tensor of N rows with row stride rb (ternary.h).
inline int code_at(const uint8_t* packed, size_t rb, int64_t N, int64_t n, int64_t j) {
    const int64_t t = n / kTL1TileRows;
    uint8_t b;
    int hi;
    if (kTL1TileRows * (t + 1) <= N) {  // a full tile: interleaved units
        const int64_t r = n % kTL1TileRows, g = j / kTL1GroupPairs, lane = j % kTL1GroupPairs;
        b = packed[size_t(t) * kTL1TileRows * rb + size_t(g) * kTL1UnitBytes + size_t(lane) * 8 +
                   size_t(r % 8)];
        hi = r >= 8;
    } else {  // the last, partial tile: plain rows
        b = packed[size_t(n) * rb + size_t(j / 2)];
        hi = int(j & 1);
    }
    return hi ? b >> 4 : b & 15;
}

// The 16-byte lookup table of one activation pair (a0, a1):
//   byte p = low byte, byte 8 + p = high byte of the int16 v_p = w0(p) * a0 + w1(p) * a1,
// computed with adds and subtracts only. |v_p| <= 256.
inline void pair_table(int a0, int a1, uint8_t* t) {
    for (int p = 0; p < kPatterns; ++p) {
        int v = 0;
        if (kW0[p] > 0) v += a0;
        else if (kW0[p] < 0) v -= a0;
        if (kW1[p] > 0) v += a1;
        else if (kW1[p] < 0) v -= a1;
        const uint16_t u = uint16_t(int16_t(v));
        t[p] = uint8_t(u & 0xff);
        t[8 + p] = uint8_t(u >> 8);
    }
}

// Tables of the pairs of groups [g0, g0 + ng) of one token a (K activations; those at k >= K
// count as 0): table of pair j at tab + 16 * (j - 4 * g0), so group g's 4 tables are 64 bytes.
inline void build_tables(const int8_t* a, int64_t K, int64_t g0, int64_t ng, uint8_t* tab) {
    for (int64_t j = 4 * g0; j < 4 * (g0 + ng); ++j) {
        const int64_t k = 2 * j;
        pair_table(k < K ? a[k] : 0, k + 1 < K ? a[k + 1] : 0, tab + 16 * (j - 4 * g0));
    }
}

// The reference over rows [n0, n1): every ISA's kernel uses it for the rows outside whole tiles.
inline void rows_scalar(const uint8_t* packed, int64_t K, int64_t N, int64_t n0, int64_t n1,
                        const int8_t* q, int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    const size_t rb = row_bytes(Format::TL1, K);
    const int64_t pairs = groups(K) * kTL1GroupPairs;
    for (int64_t n = n0; n < n1; ++n) {
        for (int64_t m = 0; m < M; ++m) {
            const int8_t* a = q + m * ldq;
            int32_t sum = 0;
            for (int64_t j = 0; j < pairs; ++j) {
                const int c = code_at(packed, rb, N, n, j);
                if (c & 8) continue;  // (0, 0)
                const int64_t k = 2 * j;
                const int a0 = k < K ? a[k] : 0, a1 = k + 1 < K ? a[k + 1] : 0;
                if (kW0[c] > 0) sum += a0;
                else if (kW0[c] < 0) sum -= a0;
                if (kW1[c] > 0) sum += a1;
                else if (kW1[c] < 0) sum -= a1;
            }
            acc[m * ldc + n] = sum;
        }
    }
}

// Whole tiles inside [n0, n1) and the matrix: [t0, t1); the rest of [n0, n1) goes to rows_scalar.
inline void tile_range(int64_t N, int64_t n0, int64_t n1, int64_t& t0, int64_t& t1) {
    t0 = (n0 + kTL1TileRows - 1) / kTL1TileRows;
    t1 = (n1 < N ? n1 : N) / kTL1TileRows;
    if (t1 < t0) t1 = t0;
}

inline void edges_scalar(const uint8_t* packed, int64_t K, int64_t N, int64_t n0, int64_t n1,
                         int64_t t0, int64_t t1, const int8_t* q, int64_t ldq, int64_t M,
                         int32_t* acc, int64_t ldc) {
    if (t0 == t1) {
        rows_scalar(packed, K, N, n0, n1, q, ldq, M, acc, ldc);
        return;
    }
    rows_scalar(packed, K, N, n0, kTL1TileRows * t0, q, ldq, M, acc, ldc);
    rows_scalar(packed, K, N, kTL1TileRows * t1, n1, q, ldq, M, acc, ldc);
}

}  // namespace
}  // namespace tl1
}  // namespace ternary
