// Scalar reference kernels: the ground truth every ISA must match bit for bit (integer paths).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "ternary.h"

namespace ternary {
namespace {

// T1 decode table: code (0..242) -> its five weights in {-1, 0, 1}.
struct T1Table {
    int8_t w[256][kT1DigitsPerByte];
    T1Table() {
        for (int c = 0; c < 256; ++c) {
            int v = c;
            for (int i = 0; i < kT1DigitsPerByte; ++i, v /= 3) w[c][i] = int8_t(v % 3 - 1);
        }
    }
};
const T1Table kT1Table;

void ternary_t2_ref(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                    int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    const size_t rb = row_bytes(Format::T2, K);
    const int64_t nblocks = int64_t(rb) / kT2BlockBytes;
    for (int64_t n = n0; n < n1; ++n) {
        const uint8_t* row = packed + n * rb;
        for (int64_t m = 0; m < M; ++m) {
            const int8_t* a = q + m * ldq;
            int32_t sum = 0;
            for (int64_t b = 0; b < nblocks; ++b) {
                BlockT2 blk;
                std::memcpy(&blk, row + b * kT2BlockBytes, sizeof blk);
                for (int s = 0; s < 4; ++s) {
                    for (int j = 0; j < 64; ++j) {
                        // Padding bits are zero, so k >= K is never read.
                        const int64_t k = b * kT2BlockWeights + 64 * s + j;
                        if ((blk.plus[s] >> j) & 1) sum += a[k];
                        else if ((blk.minus[s] >> j) & 1) sum -= a[k];
                    }
                }
            }
            acc[m * ldc + n] = sum;
        }
    }
}

void ternary_t1_ref(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                    int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    const size_t rb = row_bytes(Format::T1, K);
    const int64_t nblocks = int64_t(rb) / kT1BlockBytes;
    for (int64_t n = n0; n < n1; ++n) {
        const uint8_t* row = packed + n * rb;
        for (int64_t m = 0; m < M; ++m) {
            const int8_t* a = q + m * ldq;
            int32_t sum = 0;
            for (int64_t b = 0; b < nblocks; ++b) {
                for (int j = 0; j < 64; ++j) {
                    const int8_t* w = kT1Table.w[row[b * kT1BlockBytes + j]];
                    for (int i = 0; i < kT1DigitsPerByte; ++i) {
                        const int64_t k = b * kT1BlockWeights + 64 * i + j;
                        if (k >= K) break;  // padded weights are 0 and q ends at K
                        if (w[i] > 0) sum += a[k];
                        else if (w[i] < 0) sum -= a[k];
                    }
                }
            }
            acc[m * ldc + n] = sum;
        }
    }
}

}  // namespace

// Declared in ternary.h: the portable KV-cache attention (kv_attention.cpp) reads halves too.
float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: renormalize
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) {
                mant <<= 1;
                --exp;
            }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

namespace {

void f16_rows_ref(const uint16_t* w, int64_t K, int64_t n0, int64_t n1, const float* x,
                  int64_t M, float* out, int64_t ldc) {
    for (int64_t n = n0; n < n1; ++n) {
        for (int64_t m = 0; m < M; ++m) {
            float sum = 0.f;
            for (int64_t k = 0; k < K; ++k) sum += x[m * K + k] * half_to_float(w[n * K + k]);
            out[m * ldc + n] = sum;
        }
    }
}

void int8_rows_ref(const int8_t* w, const float* row_scale, int64_t K, int64_t n0, int64_t n1,
                   const float* x, int64_t M, float* out, int64_t ldc) {
    for (int64_t n = n0; n < n1; ++n) {
        for (int64_t m = 0; m < M; ++m) {
            float sum = 0.f;
            for (int64_t k = 0; k < K; ++k) sum += x[m * K + k] * float(w[n * K + k]);
            out[m * ldc + n] = sum * row_scale[n];
        }
    }
}

void q4_rows_ref(const uint8_t* packed, const int16_t* sub, int64_t K, int64_t n0, int64_t n1,
                 const int8_t* q, const int16_t* qsum, int64_t M, int32_t* acc, int64_t ldc) {
    (void)qsum;  // the reference subtracts the 8 per weight directly
    const int64_t G = K / kQ4Group;
    for (int64_t n = n0; n < n1; ++n) {
        const uint8_t* row = packed + n * G * kQ4GroupBytes;
        for (int64_t m = 0; m < M; ++m) {
            const int8_t* a = q + m * K;
            int64_t sum = 0;
            for (int64_t g = 0; g < G; ++g) {
                int64_t dot = 0;
                for (int j = 0; j < kQ4GroupBytes; ++j) {
                    const uint8_t b = row[g * kQ4GroupBytes + j];
                    dot += int64_t((b & 15) - 8) * a[g * kQ4Group + j];
                    dot += int64_t((b >> 4) - 8) * a[g * kQ4Group + 64 + j];
                }
                sum += dot * sub[n * G + g];
            }
            acc[m * ldc + n] = int32_t(uint32_t(uint64_t(sum)));  // in range by kQ4MaxK
        }
    }
}

float quantize_row_ref(const float* x, int64_t K, int8_t* q) {
    float amax = 0.f;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(x[k]));
    const float scale = 127.f / std::max(amax, 1e-5f);
    for (int64_t k = 0; k < K; ++k) {
        // nearbyint: round half to even, like torch.round (std::round would round half away).
        const float r = std::nearbyint(x[k] * scale);
        q[k] = int8_t(std::min(127.f, std::max(-128.f, r)));
    }
    return scale;
}

}  // namespace

const KernelTable& ref_kernels() {
    static const KernelTable t{"ref", ternary_t2_ref, ternary_t1_ref, f16_rows_ref, int8_rows_ref,
                               q4_rows_ref, quantize_row_ref};
    return t;
}

}  // namespace ternary
