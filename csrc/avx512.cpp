// avx512 kernels. PLACEHOLDER until the SIMD kernels land: forwards to the reference so the
// build and dispatch work end to end. Being replaced now; see csrc/ternary.h for the layouts.
#include "ternary.h"

namespace ternary {

const KernelTable& avx512_kernels() {
    static const KernelTable t = [] {
        KernelTable k = ref_kernels();
        k.name = "avx512";
        return k;
    }();
    return t;
}

}  // namespace ternary
