// TL1 scalar reference kernel and packer: they define the TL1 layout of ternary.h, which every
// ISA's kernel reads bit for bit.
#include <cstring>

#include "tl1.h"

namespace ternary {

void ternary_tl1_ref(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                     int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    tl1::rows_scalar(packed, K, /*N=*/ldc, n0, n1, q, ldq, M, acc, ldc);
}

namespace {

// Byte offset and nibble (0 low, 1 high) of pair j of row n.
inline void locate(int64_t N, size_t rb, int64_t n, int64_t j, size_t& off, int& hi) {
    const int64_t t = n / kTL1TileRows;
    if (kTL1TileRows * (t + 1) <= N) {
        const int64_t r = n % kTL1TileRows;
        off = size_t(t) * kTL1TileRows * rb + size_t(j / kTL1GroupPairs) * kTL1UnitBytes +
              size_t(j % kTL1GroupPairs) * 8 + size_t(r % 8);
        hi = r >= 8;
    } else {
        off = size_t(n) * rb + size_t(j / 2);
        hi = int(j & 1);
    }
}

}  // namespace

// Weights are in {-1, 0, 1} (pack_rows checks them first).
void pack_tl1(const int8_t* w, int64_t n, int64_t k, uint8_t* out) {
    const size_t rb = row_bytes(Format::TL1, k);
    const int64_t pairs = tl1::groups(k) * kTL1GroupPairs;
    for (int64_t r = 0; r < n; ++r) {
        for (int64_t j = 0; j < pairs; ++j) {
            const int64_t i = 2 * j;
            const int w0 = i < k ? w[r * k + i] : 0, w1 = i + 1 < k ? w[r * k + i + 1] : 0;
            size_t off;
            int hi;
            locate(n, rb, r, j, off, hi);
            const uint8_t c = tl1::encode(w0, w1);
            out[off] = uint8_t(hi ? (out[off] & 0x0f) | (c << 4) : (out[off] & 0xf0) | c);
        }
    }
}

void unpack_tl1(const uint8_t* packed, int64_t n, int64_t k, int8_t* out) {
    const size_t rb = row_bytes(Format::TL1, k);
    for (int64_t r = 0; r < n; ++r) {
        for (int64_t i = 0; i < k; ++i) {
            const int c = tl1::code_at(packed, rb, n, r, i / 2);
            out[r * k + i] = c & 8 ? 0 : (i & 1 ? tl1::kW1[c] : tl1::kW0[c]);
        }
    }
}

}  // namespace ternary
