// TL2 packer, unpacker and scalar reference kernel: they define the layout documented in
// ternary.h; every ISA kernel reads exactly these bytes and must match this kernel bit for bit.
#include <cstring>
#include <vector>

#include "tl2.h"

namespace ternary {

bool pack_rows_tl2(const int8_t* w, int64_t n, int64_t k, uint8_t* out) {
    const int64_t nb = tl2::blocks(k), rb = nb * kTL2BlockBytes;
    for (int64_t r = 0; r < n; ++r) {
        const int8_t* row = w + r * k;
        for (int64_t b = 0; b < nb; ++b) {
            uint16_t words[kTL2BlockWords] = {};
            for (int i = 0; i < kTL2BlockGroups; ++i) {
                int w3[kTL2GroupWeights];
                for (int d = 0; d < kTL2GroupWeights; ++d) {
                    const int64_t idx = b * kTL2BlockWeights + kTL2GroupWeights * i + d;
                    w3[d] = idx < k ? row[idx] : 0;  // padding: weight 0
                    if (w3[d] < -1 || w3[d] > 1) return false;
                }
                const int code = tl2::code_of_weights(w3[0], w3[1], w3[2]);
                const int bit = 5 * i, j = bit / 16, s = bit % 16;
                words[j] = uint16_t(words[j] | (code << s));
                if (s > 11) words[j + 1] = uint16_t(words[j + 1] | (code >> (16 - s)));
            }
            for (int j = 0; j < kTL2BlockWords; ++j)
                std::memcpy(out + tl2::word_offset(n, rb, r, b, j), &words[j], 2);  // little-endian
        }
    }
    return true;
}

static void load_block(const uint8_t* packed, int64_t N, int64_t rb, int64_t n, int64_t b,
                       uint16_t* words) {
    for (int j = 0; j < kTL2BlockWords; ++j)
        std::memcpy(&words[j], packed + tl2::word_offset(N, rb, n, b, j), 2);
}

void unpack_rows_tl2(const uint8_t* packed, int64_t n, int64_t k, int8_t* out) {
    const int64_t nb = tl2::blocks(k), rb = nb * kTL2BlockBytes;
    for (int64_t r = 0; r < n; ++r) {
        for (int64_t b = 0; b < nb; ++b) {
            uint16_t words[kTL2BlockWords];
            load_block(packed, n, rb, r, b, words);
            for (int i = 0; i < kTL2BlockGroups; ++i) {
                const int c = tl2::code_of(words, i);
                for (int d = 0; d < kTL2GroupWeights; ++d) {
                    const int64_t idx = b * kTL2BlockWeights + kTL2GroupWeights * i + d;
                    if (idx < k) out[r * k + idx] = int8_t(tl2::weight_of(c, d));
                }
            }
        }
    }
}

// Per token and group g: T[c] = sum_d weight_of(c, d) * a[3g + d] for the 32 codes (adds and
// subtracts only), then acc = sum over groups of T[code of the group].
void ternary_tl2_ref(const uint8_t* packed, int64_t K, int64_t N, int64_t n0, int64_t n1,
                     const int8_t* q, int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    const int64_t nb = tl2::blocks(K), rb = nb * kTL2BlockBytes, G = nb * kTL2BlockGroups;
    std::vector<int16_t> tables(size_t(G) * 32);
    for (int64_t m = 0; m < M; ++m) {
        const int8_t* a = q + m * ldq;
        for (int64_t g = 0; g < G; ++g) {
            for (int c = 0; c < 32; ++c) {
                int t = 0;
                for (int d = 0; d < kTL2GroupWeights; ++d) {
                    const int64_t k = kTL2GroupWeights * g + d;
                    if (k >= K) break;  // q ends at K; padded weights are 0
                    const int w = tl2::weight_of(c, d);
                    if (w > 0) t += a[k];
                    else if (w < 0) t -= a[k];
                }
                tables[size_t(g) * 32 + c] = int16_t(t);
            }
        }
        for (int64_t n = n0; n < n1; ++n) {
            int32_t sum = 0;
            for (int64_t b = 0; b < nb; ++b) {
                uint16_t words[kTL2BlockWords];
                load_block(packed, N, rb, n, b, words);
                for (int i = 0; i < kTL2BlockGroups; ++i)
                    sum += tables[size_t(b * kTL2BlockGroups + i) * 32 + tl2::code_of(words, i)];
            }
            acc[m * ldc + n] = sum;
        }
    }
}

}  // namespace ternary
