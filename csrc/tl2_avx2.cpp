// TL2 kernel for AVX2 (only this file's ISA flags: -mavx2 -mfma -mf16c). Layout: ternary.h.
#include <immintrin.h>

#include "tl2.h"

namespace ternary {
namespace tl2 {
Kernel avx2_kernel() { return ternary_tl2_ref; }
}  // namespace tl2
}  // namespace ternary
