// TL2 internals shared by the packer, the reference and the ISA kernels (layout: ternary.h).
#pragma once
#include <cstdint>
#include <cstring>

#include "ternary.h"

namespace ternary {
namespace tl2 {

inline int64_t blocks(int64_t K) { return (K + kTL2BlockWeights - 1) / kTL2BlockWeights; }

// Rows of tile t (32 t .. 32 t + tile_rows - 1) of an N-row matrix.
inline int64_t tile_rows(int64_t N, int64_t t) {
    const int64_t left = N - t * kTL2TileRows;
    return left < kTL2TileRows ? left : kTL2TileRows;
}

// Byte offset of word j of block b of row n (N rows, rb = row_bytes(TL2, K)).
inline int64_t word_offset(int64_t N, int64_t rb, int64_t n, int64_t b, int j) {
    const int64_t t = n / kTL2TileRows, r = n % kTL2TileRows, nr = tile_rows(N, t);
    return t * kTL2TileRows * rb + ((b * kTL2BlockWords + j) * nr + r) * 2;
}

// Code i (0..15) of a row's block from its 5 words.
inline int code_of(const uint16_t* w, int i) {
    const int bit = 5 * i, j = bit / 16, s = bit % 16;
    uint32_t v = w[j];
    if (j + 1 < kTL2BlockWords) v |= uint32_t(w[j + 1]) << 16;
    return int((v >> s) & 31);
}

// Code of weights (w0, w1, w2) in {-1, 0, 1}.
inline int code_of_weights(int w0, int w1, int w2) {
    const int v = 9 * w0 + 3 * w1 + w2;
    return v < 0 ? 16 - v : v;
}

// Weight d (0..2) of a code: balanced-ternary digit d (most significant first) of
// v = +-(c & 15); 0 for magnitudes 14 and 15, which the packer never writes.
inline int weight_of(int c, int d) {
    const int mag = c & 15;
    if (mag > kTL2MaxMagnitude) return 0;
    int v = c & 16 ? -mag : mag, w[3];
    for (int i = 2; i >= 0; --i) {
        w[i] = ((v + 1) % 3 + 3) % 3 - 1;  // v mod 3 in {-1, 0, 1}
        v = (v - w[i]) / 3;
    }
    return w[d];
}

}  // namespace tl2
}  // namespace ternary

namespace ternary {
namespace tl2 {
using Kernel = void (*)(const uint8_t* packed, int64_t K, int64_t N, int64_t n0, int64_t n1,
                        const int8_t* q, int64_t ldq, int64_t M, int32_t* acc, int64_t ldc);
#if defined(TERNARY_X86)
Kernel avx512_kernel();  // tl2_avx512.cpp: needs VBMI2 (vpshrdw) on top of the avx512 table's set
Kernel avx2_kernel();    // tl2_avx2.cpp
#endif
#if defined(TERNARY_NEON)
Kernel neon_kernel();    // tl2_neon.cpp
#endif
}  // namespace tl2
}  // namespace ternary
