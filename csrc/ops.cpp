// Operations the runtime calls: the active ISA's kernels, split over the thread pool by output
// rows, with the float epilogues and the small float ops of a transformer layer.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ternary.h"

namespace ternary {
namespace {

constexpr int64_t kRowAlign = 16;  // chunk starts: multiples of the widest row group of any ISA

void ternary_rows(const KernelTable& kt, Format fmt, const uint8_t* packed, int64_t K, int64_t n0,
                  int64_t n1, const int8_t* q, int64_t M, int32_t* acc, int64_t ldc) {
    (fmt == Format::T2 ? kt.ternary_t2 : kt.ternary_t1)(packed, K, n0, n1, q, K, M, acc, ldc);
}

}  // namespace

void ternary_matmul_i32(Format fmt, const uint8_t* packed, int64_t N, int64_t K, const int8_t* q,
                        int64_t M, int32_t* acc) {
    const KernelTable& kt = active_kernels();
    parallel_rows(N, kRowAlign, std::max<int64_t>(1, K * M / 8), [&](int64_t n0, int64_t n1) {
        ternary_rows(kt, fmt, packed, K, n0, n1, q, M, acc, N);
    });
}

void ternary_linear(Format fmt, const uint8_t* packed, int64_t N, int64_t K, const int8_t* q,
                    const float* act_scale, int64_t M, float weight_scale, bool divide,
                    float* out) {
    const KernelTable& kt = active_kernels();
    parallel_rows(N, kRowAlign, std::max<int64_t>(1, K * M / 8), [&](int64_t n0, int64_t n1) {
        // The int32 accumulators go into `out` itself (same size), then become floats in place
        // while the chunk is still in cache.
        int32_t* acc = reinterpret_cast<int32_t*>(out);
        ternary_rows(kt, fmt, packed, K, n0, n1, q, M, acc, N);
        for (int64_t m = 0; m < M; ++m) {
            for (int64_t n = n0; n < n1; ++n) {
                int32_t a;
                std::memcpy(&a, out + m * N + n, sizeof a);
                const float y = divide ? float(a) / (act_scale[m] * weight_scale)
                                       : float(a) / act_scale[m] * weight_scale;
                std::memcpy(out + m * N + n, &y, sizeof y);
            }
        }
    });
}

void f16_linear(const uint16_t* w, int64_t N, int64_t K, const float* x, int64_t M, float* out) {
    const KernelTable& kt = active_kernels();
    parallel_rows(N, kRowAlign, std::max<int64_t>(1, K * M), [&](int64_t n0, int64_t n1) {
        kt.f16_rows(w, K, n0, n1, x, M, out, N);
    });
}

void int8_linear(const int8_t* w, const float* row_scale, int64_t N, int64_t K, const float* x,
                 int64_t M, float* out) {
    const KernelTable& kt = active_kernels();
    parallel_rows(N, kRowAlign, std::max<int64_t>(1, K * M / 2), [&](int64_t n0, int64_t n1) {
        kt.int8_rows(w, row_scale, K, n0, n1, x, M, out, N);
    });
}

void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* act_scale) {
    const KernelTable& kt = active_kernels();
    parallel_rows(M, 1, K, [&](int64_t m0, int64_t m1) {
        for (int64_t m = m0; m < m1; ++m) act_scale[m] = kt.quantize_row(x + m * K, K, q + m * K);
    });
}

// RMSNorm as transformers computes it (float32): x * rsqrt(mean(x^2) + eps), then * weight.
static void rmsnorm_row(const float* x, const float* weight, int64_t K, float eps, float* y) {
    double ss = 0.0;  // double: the result should not depend on summation order
    for (int64_t k = 0; k < K; ++k) ss += double(x[k]) * double(x[k]);
    const float inv = 1.f / std::sqrt(float(ss / double(K)) + eps);
    for (int64_t k = 0; k < K; ++k) y[k] = weight[k] * (x[k] * inv);
}

void rmsnorm(const float* x, const float* weight, int64_t M, int64_t K, float eps, float* out) {
    parallel_rows(M, 1, K, [&](int64_t m0, int64_t m1) {
        for (int64_t m = m0; m < m1; ++m) rmsnorm_row(x + m * K, weight, K, eps, out + m * K);
    });
}

void rmsnorm_quantize_rows(const float* x, const float* weight, int64_t M, int64_t K, float eps,
                           int8_t* q, float* act_scale) {
    const KernelTable& kt = active_kernels();
    parallel_rows(M, 1, K, [&](int64_t m0, int64_t m1) {
        std::vector<float> y(static_cast<size_t>(K));
        for (int64_t m = m0; m < m1; ++m) {
            rmsnorm_row(x + m * K, weight, K, eps, y.data());
            act_scale[m] = kt.quantize_row(y.data(), K, q + m * K);
        }
    });
}

void rope_neox(float* x, int64_t T, int64_t H, int64_t D, const float* cos, const float* sin) {
    const int64_t half = D / 2;
    for (int64_t t = 0; t < T; ++t) {
        const float* c = cos + t * half;
        const float* s = sin + t * half;
        for (int64_t h = 0; h < H; ++h) {
            float* v = x + (t * H + h) * D;
            for (int64_t i = 0; i < half; ++i) {
                const float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c[i] - x2 * s[i];
                v[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

void attention(const float* q, int64_t T, int64_t Hq, int64_t D, const float* k_cache,
               const float* v_cache, int64_t Hkv, int64_t C, int64_t pos0, float* out) {
    const int64_t group = Hq / Hkv;
    const float scale = 1.f / std::sqrt(float(D));
    // One task per (query position, head): independent rows of the output.
    parallel_rows(T * Hq, 1, (pos0 + T) * D, [&](int64_t r0, int64_t r1) {
        std::vector<float> p(static_cast<size_t>(pos0 + T));
        for (int64_t r = r0; r < r1; ++r) {
            const int64_t t = r / Hq, h = r % Hq, kvh = h / group, len = pos0 + t + 1;
            const float* qv = q + r * D;
            const float* kc = k_cache + kvh * C * D;
            const float* vc = v_cache + kvh * C * D;
            float mx = -INFINITY;
            for (int64_t j = 0; j < len; ++j) {
                float dot = 0.f;
                for (int64_t d = 0; d < D; ++d) dot += qv[d] * kc[j * D + d];
                p[j] = dot * scale;
                mx = std::max(mx, p[j]);
            }
            float sum = 0.f;
            for (int64_t j = 0; j < len; ++j) {
                p[j] = std::exp(p[j] - mx);
                sum += p[j];
            }
            const float inv = 1.f / sum;
            float* o = out + r * D;
            std::fill(o, o + D, 0.f);
            for (int64_t j = 0; j < len; ++j) {
                const float pj = p[j] * inv;
                for (int64_t d = 0; d < D; ++d) o[d] += pj * vc[j * D + d];
            }
        }
    });
}

}  // namespace ternary
