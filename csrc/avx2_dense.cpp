// AVX2 + FMA + F16C dense kernels: fp16 / int8 weight rows and the attention chunk. The
// algorithms are in dense_impl.h; this file supplies the vector type.
#include <immintrin.h>

#include <cstring>

#include "dense.h"

namespace ternary {
namespace {

struct V256 {
    using F = __m256;
    static constexpr int W = 8;
    // 16 registers: 8 rows x 1 token for GEMV; 3 rows x 4 tokens (12 accumulators + 3 weights
    // + 1 activation) for GEMM.
    static constexpr int kGemvRows = 8, kTileR = 3, kTileM = 4;

    static __m256i mask(int n) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    static F zero() { return _mm256_setzero_ps(); }
    static F set1(float a) { return _mm256_set1_ps(a); }
    static F load(const float* p) { return _mm256_loadu_ps(p); }
    static F load_tail(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
    static void store(float* p, F a) { _mm256_storeu_ps(p, a); }
    static void store_tail(float* p, F a, int n) { _mm256_maskstore_ps(p, mask(n), a); }
    static F load_w(const uint16_t* p) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    static F load_w_tail(const uint16_t* p, int n) {  // no 16-bit masked load before AVX-512
        uint16_t buf[W] = {};
        std::memcpy(buf, p, size_t(n) * sizeof *p);
        return load_w(buf);
    }
    static F load_w(const int8_t* p) {
        return _mm256_cvtepi32_ps(
            _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    }
    static F load_w_tail(const int8_t* p, int n) {
        int8_t buf[16] = {};
        std::memcpy(buf, p, size_t(n));
        return load_w(buf);
    }
    static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
    static F add(F a, F b) { return _mm256_add_ps(a, b); }
    static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
    static F max(F a, F b) { return _mm256_max_ps(a, b); }
    static float reduce(F a) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
    static float reduce_max(F a) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }

    // e^x for x <= 0 (softmax): Cephes expf polynomial on x - n ln2, times 2^n built in the
    // exponent field (x >= -87 keeps n >= -126, a normal float).
    static F exp(F x) {
        x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
        const F n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        F r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
        r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
        F p = _mm256_set1_ps(1.9875691500e-4f);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
        const F y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.f));
        const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    }
};

}  // namespace
}  // namespace ternary

#include "dense_impl.h"

namespace ternary {

void add_dense_kernels_avx2(KernelTable& k) {
    k.f16_rows = dense::f16_rows<V256>;
    k.int8_rows = dense::int8_rows<V256>;
    k.q4_rows = q4_rows_avx2;
    k.attention_chunk = dense::attention_chunk<V256>;
    k.attention_chunk_f16 = dense::attention_chunk_f16<V256>;
    k.attention_chunk_i8 = dense::attention_chunk_i8<V256>;
}

}  // namespace ternary
