// Portable pieces of attention over f16 / int8 KV caches (layouts in ternary.h): the scalar
// attention chunks every table starts from, and the int8 store. The AVX2 / AVX-512 chunks are
// dense_impl.h's attention_chunk_kv, instantiated per vector type.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ternary.h"

namespace ternary {
namespace {

inline float kv_value(float x) { return x; }
inline float kv_value(uint16_t h) { return half_to_float(h); }
inline float kv_value(int8_t q) { return float(q); }

// The scalar attention chunk over rows of T (f32, f16, int8); ks / vs: per-row scales (int8)
// or nullptr.
template <class T>
void chunk_generic(const float* q, int64_t g, int64_t D, const T* k, const float* ks, const T* v,
                   const float* vs, int64_t n, float scale, float* o, float* mx, float* l) {
    std::vector<float> p(static_cast<size_t>(n));
    for (int64_t h = 0; h < g; ++h) {
        const float* qh = q + h * D;
        float m = -INFINITY;
        for (int64_t j = 0; j < n; ++j) {
            float dot = 0.f;
            for (int64_t d = 0; d < D; ++d) dot += qh[d] * kv_value(k[j * D + d]);
            p[j] = dot * scale * (ks ? ks[j] : 1.f);
            m = std::max(m, p[j]);
        }
        float sum = 0.f;
        for (int64_t j = 0; j < n; ++j) sum += p[j] = std::exp(p[j] - m);
        float* oh = o + h * D;
        std::fill(oh, oh + D, 0.f);
        for (int64_t j = 0; j < n; ++j) {
            // int8 values: the row's scale folds into its softmax weight
            const float w = vs ? p[j] * vs[j] : p[j];
            for (int64_t d = 0; d < D; ++d) oh[d] += w * kv_value(v[j * D + d]);
        }
        mx[h] = m;
        l[h] = sum;
    }
}

}  // namespace

void attention_chunk_generic(const float* q, int64_t g, int64_t D, const float* k, const float* v,
                             int64_t n, float scale, float* o, float* mx, float* l) {
    chunk_generic<float>(q, g, D, k, nullptr, v, nullptr, n, scale, o, mx, l);
}

void attention_chunk_f16_generic(const float* q, int64_t g, int64_t D, const uint16_t* k,
                                 const uint16_t* v, int64_t n, float scale, float* o, float* mx,
                                 float* l) {
    chunk_generic<uint16_t>(q, g, D, k, nullptr, v, nullptr, n, scale, o, mx, l);
}

void attention_chunk_i8_generic(const float* q, int64_t g, int64_t D, const int8_t* k,
                                const float* ks, const int8_t* v, const float* vs, int64_t n,
                                float scale, float* o, float* mx, float* l) {
    chunk_generic<int8_t>(q, g, D, k, ks, v, vs, n, scale, o, mx, l);
}

void kv_store_int8(const float* x, int64_t T, int64_t Hkv, int64_t D, int8_t* q_cache,
                   float* s_cache, int64_t C, int64_t pos0) {
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t h = 0; h < Hkv; ++h) {
            const float* xr = x + (t * Hkv + h) * D;
            int8_t* qr = q_cache + (h * C + pos0 + t) * D;
            float amax = 0.f;
            for (int64_t d = 0; d < D; ++d) amax = std::max(amax, std::fabs(xr[d]));
            const float s = amax / 127.f;
            s_cache[h * C + pos0 + t] = s;
            for (int64_t d = 0; d < D; ++d) {
                // x / s (not x * (127 / amax)): the rounding numpy's reference repeats exactly;
                // nearbyint rounds half to even, as np.rint.
                const float r = s > 0.f ? std::nearbyint(xr[d] / s) : 0.f;
                qr[d] = int8_t(std::min(127.f, std::max(-127.f, r)));
            }
        }
    }
}

}  // namespace ternary
