// Scalar tails of the SIMD quantize_row kernels: the reference's exact expressions
// (ref.cpp quantize_row_ref) for the last K % width elements. `static` and builtins only: every
// ISA translation unit gets its own copy compiled with its own flags, and none can stand in for
// another's (or the portable one) at link time.
#pragma once
#include <cstdint>

namespace ternary {

// max(amax, |x[k]|) over k in [k0, K), as std::max (NaN ignored).
static inline float absmax_tail(const float* x, int64_t k0, int64_t K, float amax) {
    for (int64_t k = k0; k < K; ++k) {
        const float a = __builtin_fabsf(x[k]);
        amax = amax < a ? a : amax;
    }
    return amax;
}

// q[k] = clamp(rint(x[k] * scale), -128, 127) for k in [k0, K); NaN -> -128 as std::max(-128, r).
static inline void quantize_tail(const float* x, int64_t k0, int64_t K, float scale, int8_t* q) {
    for (int64_t k = k0; k < K; ++k) {
        const float r = __builtin_nearbyintf(x[k] * scale);
        const float c = -128.f < r ? r : -128.f;
        q[k] = int8_t(c < 127.f ? c : 127.f);
    }
}

}  // namespace ternary
