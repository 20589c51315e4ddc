// Scalar packers: they define the T2 and T1 byte layouts documented in ternary.h.
#include <cstring>

#include "ternary.h"

namespace ternary {

bool pack_rows_tl2(const int8_t* w, int64_t n, int64_t k, uint8_t* out);  // tl2_ref.cpp
void unpack_rows_tl2(const uint8_t* packed, int64_t n, int64_t k, int8_t* out);

size_t row_bytes(Format fmt, int64_t k) {
    if (fmt == Format::TL2)
        return size_t((k + kTL2BlockWeights - 1) / kTL2BlockWeights) * kTL2BlockBytes;
    if (fmt == Format::TL1) return size_t((k + kTL1GroupWeights - 1) / kTL1GroupWeights) * 2;
    if (fmt == Format::T2) return size_t((k + kT2BlockWeights - 1) / kT2BlockWeights) * kT2BlockBytes;
    return size_t((k + kT1BlockWeights - 1) / kT1BlockWeights) * kT1BlockBytes;
}

static bool pack_row_t2(const int8_t* w, int64_t k, uint8_t* out) {
    const int64_t nblocks = (k + kT2BlockWeights - 1) / kT2BlockWeights;
    for (int64_t b = 0; b < nblocks; ++b) {
        BlockT2 blk{};
        for (int s = 0; s < 4; ++s) {
            for (int j = 0; j < 64; ++j) {
                const int64_t idx = b * kT2BlockWeights + 64 * s + j;
                if (idx >= k) break;
                const int8_t v = w[idx];
                if (v == 1) blk.plus[s] |= uint64_t(1) << j;
                else if (v == -1) blk.minus[s] |= uint64_t(1) << j;
                else if (v != 0) return false;
            }
        }
        std::memcpy(out + b * kT2BlockBytes, &blk, sizeof blk);  // little-endian hosts only
    }
    return true;
}

static bool pack_row_t1(const int8_t* w, int64_t k, uint8_t* out) {
    const int64_t nblocks = (k + kT1BlockWeights - 1) / kT1BlockWeights;
    for (int64_t b = 0; b < nblocks; ++b) {
        for (int j = 0; j < 64; ++j) {
            int code = 0, power = 1;
            for (int i = 0; i < kT1DigitsPerByte; ++i, power *= 3) {
                const int64_t idx = b * kT1BlockWeights + 64 * i + j;
                const int v = idx < k ? w[idx] : 0;  // padding is weight 0, digit 1
                if (v < -1 || v > 1) return false;
                code += (v + 1) * power;
            }
            out[b * kT1BlockBytes + j] = uint8_t(code);
        }
    }
    return true;
}

bool pack_rows(Format fmt, const int8_t* w, int64_t n, int64_t k, uint8_t* out) {
    if (fmt == Format::TL2) return pack_rows_tl2(w, n, k, out);  // rows interleaved in tiles
    const size_t rb = row_bytes(fmt, k);
    if (fmt == Format::TL1) {  // tiles span rows: check every weight, then pack the tensor
        for (int64_t i = 0; i < n * k; ++i)
            if (w[i] < -1 || w[i] > 1) return false;
        pack_tl1(w, n, k, out);
        return true;
    }
    for (int64_t r = 0; r < n; ++r) {
        const bool ok = fmt == Format::T2 ? pack_row_t2(w + r * k, k, out + r * rb)
                                          : pack_row_t1(w + r * k, k, out + r * rb);
        if (!ok) return false;
    }
    return true;
}

void unpack_rows(Format fmt, const uint8_t* packed, int64_t n, int64_t k, int8_t* out) {
    if (fmt == Format::TL2) return unpack_rows_tl2(packed, n, k, out);
    if (fmt == Format::TL1) return unpack_tl1(packed, n, k, out);
    const size_t rb = row_bytes(fmt, k);
    for (int64_t r = 0; r < n; ++r) {
        const uint8_t* row = packed + r * rb;
        int8_t* dst = out + r * k;
        for (int64_t idx = 0; idx < k; ++idx) {
            if (fmt == Format::T2) {
                const int64_t b = idx / kT2BlockWeights, s = (idx % kT2BlockWeights) / 64, j = idx % 64;
                BlockT2 blk;
                std::memcpy(&blk, row + b * kT2BlockBytes, sizeof blk);
                dst[idx] = int8_t(int((blk.plus[s] >> j) & 1) - int((blk.minus[s] >> j) & 1));
            } else {
                const int64_t b = idx / kT1BlockWeights, i = (idx % kT1BlockWeights) / 64, j = idx % 64;
                int code = row[b * kT1BlockBytes + j];
                for (int d = 0; d < i; ++d) code /= 3;
                dst[idx] = int8_t(code % 3 - 1);
            }
        }
    }
}

}  // namespace ternary
