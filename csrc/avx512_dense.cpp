// AVX-512 dense kernels: fp16 / int8 weight rows (vcvtph2ps / vpmovsxbd + FMA) and the
// attention chunk. The algorithms are in dense_impl.h; this file supplies the vector type.
// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_* idiom
// (GCC bug 105593, fixed in 12.3).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "dense.h"

namespace ternary {
namespace {

struct V512 {
    using F = __m512;
    static constexpr int W = 16;
    // 8 rows x 1 token for GEMV; 4 rows x 6 tokens (24 accumulators + 4 weights + 1
    // activation of the 32 registers) for GEMM.
    static constexpr int kGemvRows = 8, kTileR = 4, kTileM = 6;

    static __mmask16 mask(int n) { return __mmask16((1u << n) - 1); }
    static F zero() { return _mm512_setzero_ps(); }
    static F set1(float a) { return _mm512_set1_ps(a); }
    static F load(const float* p) { return _mm512_loadu_ps(p); }
    static F load_tail(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
    static void store(float* p, F a) { _mm512_storeu_ps(p, a); }
    static void store_tail(float* p, F a, int n) { _mm512_mask_storeu_ps(p, mask(n), a); }
    static F load_w(const uint16_t* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static F load_w_tail(const uint16_t* p, int n) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask(n), p));
    }
    static F load_w(const int8_t* p) {
        return _mm512_cvtepi32_ps(
            _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    }
    static F load_w_tail(const int8_t* p, int n) {
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask(n), p)));
    }
    static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
    static F add(F a, F b) { return _mm512_add_ps(a, b); }
    static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
    static F max(F a, F b) { return _mm512_max_ps(a, b); }
    static float reduce(F a) { return _mm512_reduce_add_ps(a); }
    static float reduce_max(F a) { return _mm512_reduce_max_ps(a); }

    // e^x for x <= 0 (softmax): Cephes expf polynomial on x - n ln2, scaled by 2^n with scalef.
    static F exp(F x) {
        x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
        const F n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        F r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
        r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
        F p = _mm512_set1_ps(1.9875691500e-4f);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
        const F y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.f));
        return _mm512_scalef_ps(y, n);
    }
};

}  // namespace
}  // namespace ternary

#include "dense_impl.h"

namespace ternary {

void add_dense_kernels_avx512(KernelTable& k) {
    k.f16_rows = dense::f16_rows<V512>;
    k.int8_rows = dense::int8_rows<V512>;
    k.q4_rows = q4_rows_avx512;
    k.attention_chunk = dense::attention_chunk<V512>;
    k.attention_chunk_f16 = dense::attention_chunk_f16<V512>;
    k.attention_chunk_i8 = dense::attention_chunk_i8<V512>;
}

}  // namespace ternary
