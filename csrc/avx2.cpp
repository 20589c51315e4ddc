// avx2 kernels. PLACEHOLDER until the SIMD kernels land: forwards to the reference so the
// build and dispatch work end to end. Being replaced now; see csrc/ternary.h for the layouts.
#include "dense.h"
#include "ternary.h"

namespace ternary {

const KernelTable& avx2_kernels() {
    static const KernelTable t = [] {
        KernelTable k = ref_kernels();
        k.name = "avx2";
        add_dense_kernels_avx2(k);  // f16_rows, int8_rows, attention_chunk
        return k;
    }();
    return t;
}

}  // namespace ternary
