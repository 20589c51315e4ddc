// Dense (non-ternary) kernels: fp16 / int8 weight rows with float32 activations (the fp16
// baseline and a quantized lm_head), the Q4 lm_head rows, the attention chunk kernel, and the DRAM bandwidth probe
// the benchmarks compare against. Signatures match the KernelTable entries in ternary.h.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ternary.h"

namespace ternary {

#if defined(TERNARY_X86)
// Fill the dense entries (f16_rows, int8_rows, attention_chunk) of an ISA's table; called from
// that ISA's *_kernels() so new dense entries never touch the ternary kernel files.
void add_dense_kernels_avx512(KernelTable& k);  // avx512_dense.cpp
void add_dense_kernels_avx2(KernelTable& k);    // avx2_dense.cpp
// KernelTable::q4_rows (the Q4 lm_head), set by add_dense_kernels_*.
void q4_rows_avx512(const uint8_t* packed, const int16_t* sub, int64_t K, int64_t n0, int64_t n1,
                    const int8_t* q, const int16_t* qsum, int64_t M, int32_t* acc, int64_t ldc);
void q4_rows_avx2(const uint8_t* packed, const int16_t* sub, int64_t K, int64_t n0, int64_t n1,
                  const int8_t* q, const int16_t* qsum, int64_t M, int32_t* acc, int64_t ldc);
#endif

// GB/s of a plain sequential read of an nbytes buffer (allocated and touched once, then read
// reps times by `threads` threads, each its own contiguous slice); the median rep. The figure
// kernel GEMVs are held against: pass nbytes >= 4x the last-level cache.  (bandwidth.cpp)
double stream_read_gbps(size_t nbytes, int threads, int reps);

}  // namespace ternary
