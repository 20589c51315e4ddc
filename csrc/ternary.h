// ternary-engine kernel API. Plain C++17, no Python headers.
//
// Conventions
//   W      weights [N, K]: N output rows, K inputs (PyTorch Linear layout).
//   q      int8 activations [M, K], one row per token, quantized per row (absmax).
//   acc    int32 [M, N] = sum_k q[m, k] * w[n, k], computed WITHOUT multiplying by a weight:
//          the ternary kernels select (+a / -a / skip) and add.
//
// Packed ternary formats (engine-native; the scalar packers in pack.cpp define them and every
// ISA kernel reads exactly these bytes). Each packed row is zero-padded to whole blocks, and a
// padded weight is 0, so padding never changes a result.
//
//   T2 (2 bits/weight): one 64-byte block (one cache line) per 256 weights of a row:
//        bytes  0..31  plus masks : 4 little-endian uint64, sub-block s = 0..3
//        bytes 32..63  minus masks: 4 little-endian uint64, sub-block s = 0..3
//      bit j of plus[s] is 1  <=>  w[256*b + 64*s + j] == +1
//      bit j of minus[s] is 1 <=>  w[256*b + 64*s + j] == -1
//      A 64-bit mask selects the 64 int8 activations of one AVX-512 register (or 2 AVX2 / 4 NEON
//      registers), so one cache line of weights feeds 4 registers of activations.
//
//   T1 (1.6 bits/weight): one 64-byte block per 320 weights of a row:
//      byte j (0..63) = sum_{i=0..4} (w[320*b + 64*i + j] + 1) * 3^i     (value 0..242)
//      Digit i of all 64 bytes of a block gives the 64 contiguous weights 64*i .. 64*i+63,
//      so one decoded digit plane feeds one AVX-512 register of activations.
//
//   TL2 (5/3 = 1.667 bits/weight; docs/formats.md), read by table lookup: 3 consecutive weights
//   of a row form a group (w0 = weight 3g, w1 = 3g + 1, w2 = 3g + 2), stored as one 5-bit
//   sign/magnitude code
//      v = 9 w0 + 3 w1 + w2  (balanced ternary, -13..13),   c = |v| + (v < 0 ? 16 : 0),
//   so code 0 is three zero weights (zero bytes are zero weights), c and c ^ 16 are negatives
//   of each other, and bits 0..3 alone (|v|) index a 14-entry table that a sign flip finishes
//   (AVX2 byte shuffles) while all 5 bits index a 32-entry table (AVX-512 vpermw, NEON tbl).
//   16 groups = one block = 48 weights;
//   a row's block is 16 codes = 80 bits = 5 little-endian uint16 words, code i at bits
//   5i .. 5i+4 of the 80-bit value w4:w3:w2:w1:w0 (codes 3, 6, 9 and 12 straddle two words).
//   Rows are interleaved in tiles of 32 (so one 64-byte load gives word j of 32 rows, one
//   16-bit lane per row: the index vector of one vpermw):
//
//      tile t = rows 32t .. 32t + nr - 1,  nr = min(32, N - 32t)   (only the last tile is short)
//      tile t starts at byte 32 t * row_bytes;  inside it, for block b = 0..B-1, word j = 0..4:
//        [ b=0 j=0: row 0 | row 1 | ... | row nr-1 ]  (2 nr bytes)
//        [ b=0 j=1: row 0 | row 1 | ... | row nr-1 ]
//          ...
//        [ b=0 j=4: ... ] [ b=1 j=0: ... ] ... [ b=B-1 j=4: ... ]
//      one row of one block:  w0 = c0 | c1<<5 | c2<<10 | (c3&1)<<15,  w1 = c3>>1 | c4<<4 | ...
//        bit:  0    5    10   15   20   25   30   35   40   45   50   55   60   65   70   75 80
//              | c0 | c1 | c2 | c3 | c4 | c5 | c6 | c7 | c8 | c9 |c10 |c11 |c12 |c13 |c14 |c15 |
//              |<---- w0 ---->|<---- w1 ---->|<---- w2 ---->|<---- w3 ---->|<---- w4 ---->|
//   row_bytes(TL2, K) = 10 * ceil(K / 48); the packed array is [N, row_bytes] bytes in total,
//   but a row's bytes are spread over its tile, so the TL2 kernels and unpacking need N (the
//   ternary_tl2 slot takes it). Weights past K are 0 (code 0). Codes with |v| = 14 or 15 (14, 15,
//   30, 31), which the packer never writes, decode as three zero weights on every ISA; 16 is -0.
//   Kernels: per token and group, a table T[c] = sum_i w_i(c) a_i (adds and subtracts
//   of activations, |T| <= 384); the result is sum over groups of T[code], exact in int32.
//   TL1 (2 bits/weight, table lookup): weights in pairs (w[2j], w[2j+1]), one 4-bit code per
//      pair: bit 3 set = (0, 0); else bits 0..2 = p, (w0, w1) = kW0/kW1[p] of tl1.h, the 3x3
//      grid (w0 + 1) * 3 + (w1 + 1) without its centre. K is padded to whole groups of 4 pairs
//      (8 weights; padding code 8), row_bytes = 2 * ceil(K / 8). Rows come in tiles of 16:
//      tile t = rows 16t .. 16t+15 = the 16 * row_bytes bytes from row 16t on, a sequence of
//      32-byte units, unit g = pairs 4g .. 4g+3 of the tile's 16 rows:
//
//          unit byte  8*L + r  (L = 0..3 pair 4g+L, r = 0..7):
//              low nibble  = code of (row 16t + r,     pair 4g + L)
//              high nibble = code of (row 16t + 8 + r, pair 4g + L)
//
//          byte:  0 .. 7      8 .. 15     16 .. 23    24 .. 31
//          pair:  4g          4g+1        4g+2        4g+3
//          lo:    rows 0-7    rows 0-7    rows 0-7    rows 0-7
//          hi:    rows 8-15   rows 8-15   rows 8-15   rows 8-15
//
//      so one 32-byte load serves 16 rows, and each 128-bit lane of the decoded indices is one
//      pair's 8 rows: one vpshufb of that pair's 16-byte table (lo bytes of the 8 sums
//      w0 a0 + w1 a1 in bytes 0..7, hi bytes in 8..15) gives 8 rows' exact int16 sums.
//      The rows of a last, partial tile (N % 16 of them) are stored plainly: row n's byte j / 2
//      holds pair j (low nibble for even j). The layout of a row thus depends on N, and TL1
//      kernels take N = ldc (ternary_rows' acc is always [M, N]); a packed TL1 tensor may be cut
//      by rows only at multiples of 16 rows below 16 * floor(N / 16).
//      Activations at k >= K count as 0. Codes the packer never writes (9..15) read as (0, 0).
//
//   Bytes the packer never writes decode as in the reference on every ISA: a T2 weight with both
//   bits set is +1; a T1 code 243..255 is read by the same base-3 rule (as code - 243).
//
// Q4 lm_head (4.25 bits/weight; the output head is not ternary, but it is ~40 % of a small
// ternary model's decode bytes at int8): rows of K weights in groups of 128,
//      w[n, k] ~= row_scale[n] * sub[n, g] * (u[n, k] - 8),   g = k / 128, u in 0..15,
//   packed [N, 64 G]: byte j (0..63) of group g = u[128 g + j] | u[128 g + 64 + j] << 4
//   sub    int16 [N, G], 0..kQ4MaxSub;  row_scale float [N].
//   The kernel output is exact int32: acc[m, n] = sum_g sub[n, g] * sum_{k in g} (u - 8) q[m, k]
//   (K <= kQ4MaxK keeps it inside int32); the float row_scale / act_scale is the caller's.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ternary {

constexpr int kT2BlockWeights = 256;
constexpr int kT2BlockBytes = 64;
constexpr int kT1BlockWeights = 320;
constexpr int kT1BlockBytes = 64;
constexpr int kT1DigitsPerByte = 5;
constexpr int kTL1TileRows = 16;     // rows per interleaved TL1 tile
constexpr int kTL1GroupPairs = 4;    // pairs per 32-byte TL1 unit (one 128-bit lane each)
constexpr int kTL1GroupWeights = 8;  // weights per row and unit
constexpr int kTL1UnitBytes = 32;    // 16 rows x 4 pairs x 4 bits

struct BlockT2 {
    uint64_t plus[4];   // bit j of plus[s]: weight 64*s + j of the block is +1
    uint64_t minus[4];  // bit j of minus[s]: weight 64*s + j of the block is -1
};
static_assert(sizeof(BlockT2) == kT2BlockBytes, "T2 block is one cache line");
static_assert(kT2BlockWeights * 2 / 8 == kT2BlockBytes, "T2 is 2 bits per weight");

struct BlockT1 {
    uint8_t trits[64];  // byte j: base-3 digits i = 0..4 are weights 64*i + j, stored as w + 1
};
static_assert(sizeof(BlockT1) == kT1BlockBytes, "T1 block is one cache line");
static_assert(kT1BlockBytes * kT1DigitsPerByte == kT1BlockWeights, "5 weights per byte");
static_assert(243 <= 256, "3^5 codes fit in a byte");

constexpr int kTL2GroupWeights = 3;
constexpr int kTL2BlockGroups = 16;                                     // codes per row per block
constexpr int kTL2BlockWeights = kTL2GroupWeights * kTL2BlockGroups;  // 48
constexpr int kTL2BlockWords = 5;                                       // uint16 per row per block
constexpr int kTL2BlockBytes = 2 * kTL2BlockWords;                      // per row: 10
constexpr int kTL2TileRows = 32;
constexpr int kTL2MaxMagnitude = 13;  // |9 w0 + 3 w1 + w2|
static_assert(kTL2BlockGroups * 5 == kTL2BlockWords * 16, "16 five-bit codes fill 5 words");
static_assert(kTL2BlockBytes * 8 * 3 == kTL2BlockWeights * 5, "TL2 is 5/3 bits per weight");

enum class Format { T2 = 0, T1 = 1, TL2 = 2, TL1 = 3 };

constexpr int kQ4Group = 128;
constexpr int kQ4GroupBytes = 64;
constexpr int kQ4MaxSub = 127;
// |acc| <= (K / 128) * 127 * 128 * 8 * 128: inside int32 for K <= 16384 (hidden sizes to 16k).
constexpr int64_t kQ4MaxK = 16384;

// Bytes of one packed row of k weights.
size_t row_bytes(Format fmt, int64_t k);

// ---- packing (pack.cpp, scalar, done once by the converter) ----
// w: int8 [n, k] in {-1, 0, 1}; out: uint8 [n, row_bytes(fmt, k)]. Returns false if a weight is
// outside {-1, 0, 1}.
bool pack_rows(Format fmt, const int8_t* w, int64_t n, int64_t k, uint8_t* out);
void unpack_rows(Format fmt, const uint8_t* packed, int64_t n, int64_t k, int8_t* out);

// Keys per attention chunk: attention() splits each query's causal key range into chunks of at
// most this many keys, a fixed size, so results never depend on the thread count.
constexpr int kAttnChunkKeys = 256;
// Portable attention_chunk (ops.cpp): the entry of every table that brings no faster one.
void attention_chunk_generic(const float* q, int64_t g, int64_t D, const float* k, const float* v,
                             int64_t n, float scale, float* o, float* mx, float* l);

// KV caches below f32 (kv_attention.cpp; the runtime's engine/runtime/kvcache.py):
//   f16   rows of D IEEE halves (as uint16_t);
//   int8  rows of D int8 with one float scale per row (= per token and kv head):
//         value[j, d] = scale[j] * q[j, d],  scale = max_d |x[d]| / 127,  q = clamp(rint(x / scale))
//         (scale 0 and q 0 for an all-zero row). Memory (D + 4) / (4 D) of f32: 0.27x at D = 64.
// The portable attention chunks over them: the entries of every table that brings no faster
// one. Contract as attention_chunk with k, v in that type; ks, vs [n] the int8 rows' scales.
void attention_chunk_f16_generic(const float* q, int64_t g, int64_t D, const uint16_t* k,
                                 const uint16_t* v, int64_t n, float scale, float* o, float* mx,
                                 float* l);
void attention_chunk_i8_generic(const float* q, int64_t g, int64_t D, const int8_t* k,
                                const float* ks, const int8_t* v, const float* vs, int64_t n,
                                float scale, float* o, float* mx, float* l);
float half_to_float(uint16_t h);  // ref.cpp

// TL2 reference kernel (tl2_ref.cpp): acc[m, n] for n in [n0, n1) of an N-row TL2 matrix.
void ternary_tl2_ref(const uint8_t* packed, int64_t K, int64_t N, int64_t n0, int64_t n1,
                     const int8_t* q, int64_t ldq, int64_t M, int32_t* acc, int64_t ldc);
// TL1 scalar reference (tl1_ref.cpp): the entry of every table that brings no faster one.
void ternary_tl1_ref(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                     int64_t ldq, int64_t M, int32_t* acc, int64_t ldc);
// TL1 packer / unpacker of a whole [n, k] tensor (tiles span rows), called by pack_rows.
void pack_tl1(const int8_t* w, int64_t n, int64_t k, uint8_t* out);
void unpack_tl1(const uint8_t* packed, int64_t n, int64_t k, int8_t* out);
#if defined(TERNARY_X86)
void ternary_tl1_avx2(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                      int64_t ldq, int64_t M, int32_t* acc, int64_t ldc);
void ternary_tl1_avx512(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                        int64_t ldq, int64_t M, int32_t* acc, int64_t ldc);
#endif
#if defined(TERNARY_NEON)
void ternary_tl1_neon(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1, const int8_t* q,
                      int64_t ldq, int64_t M, int32_t* acc, int64_t ldc);
#endif

// ---- per-ISA kernels: identical signatures, one table per ISA ----
// Every kernel works on output rows [n0, n1) so the thread pool can split by rows.
struct KernelTable {
    const char* name;

    // acc[m, n] (row stride ldc) for n in [n0, n1), m in [0, M).
    // packed: rows of row_bytes(fmt, K) bytes; q: int8 [M, K] with row stride ldq >= K.
    void (*ternary_t2)(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1,
                       const int8_t* q, int64_t ldq, int64_t M, int32_t* acc, int64_t ldc);
    void (*ternary_t1)(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1,
                       const int8_t* q, int64_t ldq, int64_t M, int32_t* acc, int64_t ldc);

    // out[m, n] = sum_k x[m, k] * float(w[n, k]); w is IEEE half [N, K] as uint16.
    void (*f16_rows)(const uint16_t* w, int64_t K, int64_t n0, int64_t n1,
                     const float* x, int64_t M, float* out, int64_t ldc);
    // out[m, n] = row_scale[n] * sum_k x[m, k] * w[n, k]; w int8 [N, K].
    void (*int8_rows)(const int8_t* w, const float* row_scale, int64_t K, int64_t n0, int64_t n1,
                      const float* x, int64_t M, float* out, int64_t ldc);
    // Q4 head rows (layout above), K a multiple of 128 (G = K / 128): acc[m, n] (row stride ldc)
    // for n in [n0, n1); q int8 [M, K] (row stride K), qsum int16 [M, G] = sums of q per group.
    void (*q4_rows)(const uint8_t* packed, const int16_t* sub, int64_t K, int64_t n0, int64_t n1,
                    const int8_t* q, const int16_t* qsum, int64_t M, int32_t* acc, int64_t ldc);

    // One row of absmax int8 quantization: scale = 127 / max(max|x|, 1e-5);
    // q = clamp(rint(x * scale), -128, 127). Returns scale.
    float (*quantize_row)(const float* x, int64_t K, int8_t* q);

    // Softmax partial of one attention chunk for the g query heads q [g, D] of one GQA group
    // over n <= kAttnChunkKeys keys and values k, v [n, D] (rows D floats apart):
    //   s[h, j] = scale * q[h] . k[j];  mx[h] = max_j s[h, j];  l[h] = sum_j e^(s[h, j] - mx[h]);
    //   o[h, :] = sum_j e^(s[h, j] - mx[h]) * v[j, :]   (o [g, D]); attention() merges chunks.
    void (*attention_chunk)(const float* q, int64_t g, int64_t D, const float* k, const float* v,
                            int64_t n, float scale, float* o, float* mx,
                            float* l) = attention_chunk_generic;

    // attention_chunk over an f16 / int8 KV cache (layouts above attention_chunk_f16_generic).
    void (*attention_chunk_f16)(const float* q, int64_t g, int64_t D, const uint16_t* k,
                                const uint16_t* v, int64_t n, float scale, float* o, float* mx,
                                float* l) = attention_chunk_f16_generic;
    void (*attention_chunk_i8)(const float* q, int64_t g, int64_t D, const int8_t* k,
                               const float* ks, const int8_t* v, const float* vs, int64_t n,
                               float scale, float* o, float* mx,
                               float* l) = attention_chunk_i8_generic;

    // TL2 (layout above): as ternary_t2, plus N, the matrix's row count (the last tile's width).
    void (*ternary_tl2)(const uint8_t* packed, int64_t K, int64_t N, int64_t n0, int64_t n1,
                        const int8_t* q, int64_t ldq, int64_t M, int32_t* acc,
                        int64_t ldc) = ternary_tl2_ref;
    // TL1 rows, as ternary_t2 but ldc must be the matrix's N (the tile layout depends on it).
    void (*ternary_tl1)(const uint8_t* packed, int64_t K, int64_t n0, int64_t n1,
                        const int8_t* q, int64_t ldq, int64_t M, int32_t* acc,
                        int64_t ldc) = ternary_tl1_ref;
};

const KernelTable& ref_kernels();
#if defined(TERNARY_X86)
const KernelTable& avx2_kernels();
const KernelTable& avx512_kernels();
#endif
#if defined(TERNARY_NEON)
const KernelTable& neon_kernels();
#endif

// ---- dispatch (dispatch.cpp) ----
// Names of ISAs this CPU runs, best last ("ref" always first).
const char* const* available_isas(int* count);
// The active table: the best available, or TERNARY_ISA from the environment at first use.
const KernelTable& active_kernels();
// Select by name; returns false if that ISA is not available here.
bool set_active_isa(const char* name);

// ---- threads (threads.cpp): one persistent pool, work split by output rows ----
int physical_cores();
int num_threads();
void set_num_threads(int n);
// Runs fn(n0, n1) over [0, n) split into contiguous chunks whose starts are multiples of
// `align`; small problems (n * cost_per_row below a threshold) run on the calling thread.
// Chunks of a given call never overlap, so results do not depend on the thread count.
// chunks_per_thread: 4 balance a shared machine; 1 where each call has a setup of its own.
template <typename Fn>
void parallel_rows(int64_t n, int64_t align, int64_t cost_per_row, Fn&& fn, int chunks_per_thread = 4);

// ---- operations (ops.cpp): dispatched kernels plus threading ----
void ternary_matmul_i32(Format fmt, const uint8_t* packed, int64_t N, int64_t K,
                        const int8_t* q, int64_t M, int32_t* acc);
// out[m, n] = acc[m, n] / act_scale[m] * weight_scale        (divide == false, BitNet)
// out[m, n] = acc[m, n] / (act_scale[m] * weight_scale)      (divide == true, Llama bitlinear)
void ternary_linear(Format fmt, const uint8_t* packed, int64_t N, int64_t K,
                    const int8_t* q, const float* act_scale, int64_t M,
                    float weight_scale, bool divide, float* out);
// Several projections of the same activations (q/k/v, gate/up) in one parallel pass over their
// rows, as if concatenated: one wake of the thread pool instead of one per projection, and small
// projections (k, v) share chunks with large ones. Each is exactly ternary_linear's result.
struct TernaryProjection {
    const uint8_t* packed;  // [N, row_bytes(fmt, K)]
    int64_t N;
    float weight_scale;
    float* out;             // [M, N]
};
void ternary_linear_fused(Format fmt, const TernaryProjection* proj, int nproj, int64_t K,
                          const int8_t* q, const float* act_scale, int64_t M, bool divide);
void f16_linear(const uint16_t* w, int64_t N, int64_t K, const float* x, int64_t M, float* out);
// f16_linear of nproj matrices w[i] [N[i], K] on the same x, in one parallel pass (as above).
void f16_linear_fused(const uint16_t* const* w, const int64_t* N, int nproj, int64_t K,
                      const float* x, int64_t M, float* const* out);
void int8_linear(const int8_t* w, const float* row_scale, int64_t N, int64_t K,
                 const float* x, int64_t M, float* out);
// out[m, n] = q4 row n . int8(x[m]) / act_scale[m] * row_scale[n]: x f32 [M, K] quantized per
// token (absmax, as the ternary linears), K <= kQ4MaxK; packed / sub hold ceil(K / 128) groups.
void q4_linear(const uint8_t* packed, const int16_t* sub, const float* row_scale, int64_t N,
               int64_t K, const float* x, int64_t M, float* out);
void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* act_scale);
void rmsnorm_quantize_rows(const float* x, const float* weight, int64_t M, int64_t K, float eps,
                           int8_t* q, float* act_scale);
void rmsnorm(const float* x, const float* weight, int64_t M, int64_t K, float eps, float* out);
// x [T, H, D] in place; cos/sin [T, D/2].
void rope_neox(float* x, int64_t T, int64_t H, int64_t D, const float* cos, const float* sin);
// q [T, Hq, D]; caches [Hkv, C, D]; out [T, Hq, D]. Query t sits at position pos0 + t.
void attention(const float* q, int64_t T, int64_t Hq, int64_t D, const float* k_cache,
               const float* v_cache, int64_t Hkv, int64_t C, int64_t pos0, float* out);
// The same over a cache of any KV type: k, v [Hkv, C, D] of that type; ks, vs [Hkv, C] the
// int8 scales (unused otherwise).
enum class KvType { F32 = 0, F16 = 1, I8 = 2 };
struct KvCacheView {
    KvType type;
    const void* k;
    const void* v;
    const float* ks = nullptr;
    const float* vs = nullptr;
};
void attention_kv(const float* q, int64_t T, int64_t Hq, int64_t D, const KvCacheView& kv,
                  int64_t Hkv, int64_t C, int64_t pos0, float* out);
// Stores x [T, Hkv, D] as int8 rows at positions pos0 .. pos0 + T - 1 of q_cache [Hkv, C, D]
// with their scales in s_cache [Hkv, C] (the int8 layout above; scalar, a few rows per call).
void kv_store_int8(const float* x, int64_t T, int64_t Hkv, int64_t D, int8_t* q_cache,
                   float* s_cache, int64_t C, int64_t pos0);

}  // namespace ternary

#include "threads_impl.h"
