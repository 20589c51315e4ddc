// TL2 kernel for AVX-512 (F/BW/VL + VBMI2; only this file gets -mavx512vbmi2). Layout: ternary.h.
//
// No multiply by a weight: per token and group of 3 activations a table of 32 int16 entries
//   T[c] = sum_d w_d(c) a_d    (all 32 codes, tl2::weight_of), built with masked adds/subs,
// and for 32 rows (one tile) at once:  acc16 += vpermw(codes, T)  -- vpermw reads index bits 0..4
// of each 16-bit lane, so a right shift (vpsrlw, or vpshrdw where a code straddles two words) of
// a tile's block words is the next group's index vector with no masking.
// |T| <= 384, so int16 sums are widened to int32 every kFlushBlocks blocks (80 * 384 < 32767).
// Tables are built for a chunk of groups (kChunkBlocks) and reused by every tile of
// rows [n0, n1); a token tile of up to kMaxTokens tokens shares each decoded index vector, which
// is what makes few-token and GEMM calls cheaper per token than GEMV.
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "tl2.h"

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ternary {
namespace {

// Token tiles of 4 x pairs of row tiles: 8 accumulators, 10 word vectors. Measured at M = 8 and
// 128: 4 tokens x 1 tile (tables as memory operands) the same, 8 tokens x 1 tile 1.6x slower.
constexpr int kMaxTokens = 4;
constexpr int kFlushBlocks = 5;          // 5 blocks = 80 groups: 80 * 384 < 32767
constexpr int kGroupTable = 32;          // int16 entries per table (one zmm)

// Bit c of mask[d][0]: weight d of code c is +1; of mask[d][1]: it is -1 (tl2::weight_of).
struct TableMasks {
    uint32_t m[3][2];
};
constexpr TableMasks make_masks() {
    TableMasks t{};
    for (int c = 0; c < 32; ++c) {
        const int mag = c & 15;
        if (mag > kTL2MaxMagnitude) continue;  // zero weights
        int v = c & 16 ? -mag : mag, w[3] = {};
        for (int i = 2; i >= 0; --i) {  // balanced ternary, as tl2::weight_of
            w[i] = ((v + 1) % 3 + 3) % 3 - 1;
            v = (v - w[i]) / 3;
        }
        for (int d = 0; d < 3; ++d) {
            if (w[d] > 0) t.m[d][0] |= 1u << c;
            if (w[d] < 0) t.m[d][1] |= 1u << c;
        }
    }
    return t;
}
constexpr TableMasks kMasks = make_masks();

struct Scratch {
    void* p = nullptr;
    size_t size = 0;
    ~Scratch() { std::free(p); }
    void* get(size_t bytes) {
        if (bytes > size) {
            std::free(p);
            size = (bytes + 4095) / 4096 * 4096;
            p = std::aligned_alloc(64, size);
            if (!p) std::abort();
        }
        return p;
    }
};
thread_local Scratch tl_tables;

// Tables of groups [g0, g1) of token a (K activations) into dst [(g1 - g0)][32]. The
// activations are widened to int16 first (zeros past K: the weights there are 0), so that each
// of a group's three broadcasts is a vpbroadcastw from memory: measured 1.5x faster than
// broadcasts from general registers.
void build_tables(const int8_t* a, int64_t K, int64_t g0, int64_t g1, int16_t* dst) {
    const __mmask32 p0 = kMasks.m[0][0], n0 = kMasks.m[0][1], p1 = kMasks.m[1][0],
                    n1 = kMasks.m[1][1], p2 = kMasks.m[2][0], n2 = kMasks.m[2][1];
    alignas(64) int16_t a16[3 * 32];
    for (int64_t c0 = g0; c0 < g1; c0 += 32) {
        const int64_t c1 = std::min(g1, c0 + 32);
        for (int v = 0; v < 3; ++v) {  // activations 3 c0 + 32 v .. + 31
            const int64_t k = 3 * c0 + 32 * v, left = K - k;
            const __mmask32 m = left >= 32 ? __mmask32(~0u) : left <= 0 ? 0 : __mmask32((1u << left) - 1);
            _mm512_store_si512(a16 + 32 * v, _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, a + (left > 0 ? k : 0))));
        }
        for (int64_t g = c0; g < c1; ++g) {
            const int16_t* x = a16 + 3 * (g - c0);
            const __m512i x0 = _mm512_set1_epi16(x[0]), x1 = _mm512_set1_epi16(x[1]),
                          x2 = _mm512_set1_epi16(x[2]);
            __m512i t = _mm512_maskz_mov_epi16(p0, x0);
            t = _mm512_mask_sub_epi16(t, n0, t, x0);
            t = _mm512_mask_add_epi16(t, p1, t, x1);
            t = _mm512_mask_sub_epi16(t, n1, t, x1);
            t = _mm512_mask_add_epi16(t, p2, t, x2);
            t = _mm512_mask_sub_epi16(t, n2, t, x2);
            _mm512_store_si512(dst + (g - g0) * kGroupTable, t);
        }
    }
}

// Index vector of code i (0..15) of a block from its 5 word vectors: bits 0..4 of each lane.
template <int i>
inline __m512i code(const __m512i* w) {
    constexpr int bit = 5 * i, j = bit / 16, s = bit % 16;
    if constexpr (s == 0) return w[j];
    else if constexpr (s <= 11) return _mm512_srli_epi16(w[j], s);
    else return _mm512_shrdi_epi16(w[j], w[j + 1], s);
}

// acc += vpermw(idx, table): inline asm so that GCC neither hoists the lookups of a whole block
// ahead of their adds (it did, spilling dozens of vectors) nor copies the accumulators.
inline void lookup_add(__m512i& acc, __m512i idx, __m512i table) {
    __m512i t;
    asm("vpermw %3, %2, %0\n\tvpaddw %0, %1, %1" : "=&v"(t), "+v"(acc) : "v"(idx), "v"(table));
}

inline void lookup_add_mem(__m512i& acc, __m512i idx, const int16_t* table) {
    __m512i t;
    asm("vpermw %3, %2, %0\n\tvpaddw %0, %1, %1"
        : "=&v"(t), "+v"(acc)
        : "v"(idx), "m"(*reinterpret_cast<const __m512i*>(table)));
}

template <int R>
inline void load_words(const uint8_t* wp, int64_t tile_bytes, __mmask32 lanes, int64_t vstride,
                       bool full, __m512i (*w)[kTL2BlockWords]) {
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < kTL2BlockWords; ++j)
            w[r][j] = full ? _mm512_loadu_si512(wp + r * tile_bytes + 64 * j)
                           : _mm512_maskz_loadu_epi16(lanes, wp + r * tile_bytes + j * vstride);
}

template <int T, int R, int i>
inline void group(const __m512i (*w)[kTL2BlockWords], const int16_t* tb, int64_t tstride,
                  __m512i (*s)[R]) {
    __m512i idx[R];
    for (int r = 0; r < R; ++r) idx[r] = code<i>(w[r]);
    for (int k = 0; k < T; ++k) {
        if (R == 1) {  // the table as vpermw's memory operand: measured faster than a load
            lookup_add_mem(s[k][0], idx[0], tb + k * tstride + i * kGroupTable);
            continue;
        }
        const __m512i table = _mm512_load_si512(tb + k * tstride + i * kGroupTable);
        for (int r = 0; r < R; ++r) lookup_add(s[k][r], idx[r], table);
    }
}

template <int T, int R, int... I>
inline void block(const __m512i (*w)[kTL2BlockWords], const int16_t* tb, int64_t tstride,
                  __m512i (*s)[R], std::integer_sequence<int, I...>) {
    (group<T, R, I>(w, tb, tstride, s), ...);
}

// R consecutive tiles starting at tile t (all full when R > 1; nr rows when R == 1), blocks
// [b0, b1) against T tokens' tables tab + k * tstride (block b's group i at
// ((b - b0) * 16 + i) * 32). Rows of the tiles inside [n0, n1) get the sums (first) or add them.
template <int T, int R>
__attribute__((noinline)) void tiles_pass(const uint8_t* packed, int64_t rb, int64_t t, int64_t nr,
                                          int64_t b0, int64_t b1, const int16_t* tab,
                                          int64_t tstride, int64_t n0, int64_t n1, bool first,
                                          int32_t* acc, int64_t ldc) {
    const __mmask32 lanes = nr == 32 ? __mmask32(~0u) : __mmask32((1u << nr) - 1);
    const int64_t tile_bytes = kTL2TileRows * rb;
    const uint8_t* base = packed + t * tile_bytes;
    const int64_t vstride = 2 * nr;  // bytes between word vectors of a tile
    const bool full = nr == 32;
    alignas(64) int32_t s32[T][R][32] = {};
    __m512i s[T][R];
    for (int k = 0; k < T; ++k)
        for (int r = 0; r < R; ++r) s[k][r] = _mm512_setzero_si512();
    auto flush = [&] {
        for (int k = 0; k < T; ++k)
            for (int r = 0; r < R; ++r) {
                __m512i* d = reinterpret_cast<__m512i*>(s32[k][r]);
                d[0] = _mm512_add_epi32(d[0], _mm512_cvtepi16_epi32(_mm512_castsi512_si256(s[k][r])));
                d[1] = _mm512_add_epi32(d[1], _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(s[k][r], 1)));
                s[k][r] = _mm512_setzero_si512();
            }
    };
    int pending = 0;
    for (int64_t b = b0; b < b1; ++b) {
        __m512i w[R][kTL2BlockWords];
        // The same block of the next pass's tiles, into L2: a chunk walks the tiles with a
        // stride, which the hardware prefetcher does not follow. Measured at 1 thread from DRAM,
        // 2560 x 6912: 8.2 GB/s without, 16.4 one pass ahead, 15.3 two, 15.3 four.
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < kTL2BlockWords; ++j)
                _mm_prefetch(reinterpret_cast<const char*>(base + b * kTL2BlockWords * vstride +
                                                           (R + r) * tile_bytes + 64 * j),
                             _MM_HINT_T1);
        load_words<R>(base + b * kTL2BlockWords * vstride, tile_bytes, lanes, vstride, full, w);
        block<T, R>(w, tab + (b - b0) * kTL2BlockGroups * kGroupTable, tstride, s,
                    std::make_integer_sequence<int, kTL2BlockGroups>{});
        if (++pending == kFlushBlocks) {
            flush();
            pending = 0;
        }
    }
    flush();
    for (int r = 0; r < R; ++r) {
        const int64_t row0 = (t + r) * kTL2TileRows;
        const int64_t r0 = std::max<int64_t>(n0 - row0, 0), r1 = std::min<int64_t>(n1 - row0, nr);
        const uint32_t rows = uint32_t(((uint64_t(1) << r1) - 1) & ~((uint64_t(1) << r0) - 1));
        const __mmask16 lo = __mmask16(rows & 0xffff), hi = __mmask16(rows >> 16);
        for (int k = 0; k < T; ++k) {
            int32_t* out = acc + k * ldc + row0;
            __m512i v0 = _mm512_load_si512(s32[k][r]), v1 = _mm512_load_si512(s32[k][r] + 16);
            if (!first) {
                v0 = _mm512_add_epi32(v0, _mm512_maskz_loadu_epi32(lo, out));
                v1 = _mm512_add_epi32(v1, _mm512_maskz_loadu_epi32(hi, out + 16));
            }
            _mm512_mask_storeu_epi32(out, lo, v0);
            _mm512_mask_storeu_epi32(out + 16, hi, v1);
        }
    }
}

// Tiles covering rows [n0, n1): pairs of full tiles, then single ones.
template <int T>
void tiles(const uint8_t* packed, int64_t N, int64_t rb, int64_t b0, int64_t b1,
           const int16_t* tab, int64_t tstride, int64_t n0, int64_t n1, bool first, int32_t* acc,
           int64_t ldc) {
    const int64_t t1 = (n1 + kTL2TileRows - 1) / kTL2TileRows;
    int64_t t = n0 / kTL2TileRows;
    // GEMV: one tile per pass, each table a memory operand (measured 1.35x faster at 640 x 2560
    // than pairs of tiles sharing a loaded table). More tokens: pairs (no difference measured).
    for (; T > 1 && t + 2 <= t1 && tl2::tile_rows(N, t + 1) == kTL2TileRows; t += 2)
        tiles_pass<T, 2>(packed, rb, t, kTL2TileRows, b0, b1, tab, tstride, n0, n1, first, acc, ldc);
    for (; t < t1; ++t)
        tiles_pass<T, 1>(packed, rb, t, tl2::tile_rows(N, t), b0, b1, tab, tstride, n0, n1, first,
                         acc, ldc);
}

// Chunks of 16 blocks (256 groups): a token tile's tables are 16 KiB per token, in L1 for GEMV;
// for 4 tokens 64 KiB, in L2, each loaded table serving 2 tiles (measured at M = 128: 1.10x faster
// than 16 KiB chunks, fewer chunk ends; GEMV tables of all K in L2: 1.25x slower).
constexpr int64_t kChunkBlocks = 16;

// Blocks [b0, b1) of one token tile of T tokens: tables, then every tile of rows [n0, n1).
template <int T>
void token_tile(const uint8_t* packed, int64_t K, int64_t N, int64_t n0, int64_t n1, int64_t b0,
                int64_t b1, const int8_t* q, int64_t ldq, int32_t* acc, int64_t ldc) {
    const int64_t rb = tl2::blocks(K) * kTL2BlockBytes;
    const int64_t tstride = kChunkBlocks * kTL2BlockGroups * kGroupTable;
    auto* tab = static_cast<int16_t*>(tl_tables.get(size_t(T * tstride) * sizeof(int16_t)));
    for (int k = 0; k < T; ++k)
        build_tables(q + k * ldq, K, b0 * kTL2BlockGroups, b1 * kTL2BlockGroups, tab + k * tstride);
    tiles<T>(packed, N, rb, b0, b1, tab, tstride, n0, n1, b0 == 0, acc, ldc);
}

// Chunks outside, token tiles inside: a chunk's weights (rows [n0, n1) x 16 blocks, 160 bytes a
// row) come from DRAM once and stay in L2 / L3 for the later token tiles.
void ternary_tl2_avx512(const uint8_t* packed, int64_t K, int64_t N, int64_t n0, int64_t n1,
                        const int8_t* q, int64_t ldq, int64_t M, int32_t* acc, int64_t ldc) {
    if (n0 >= n1) return;
    const int64_t nb = tl2::blocks(K);
    for (int64_t b0 = 0; b0 < nb; b0 += kChunkBlocks) {
        const int64_t b1 = std::min(nb, b0 + kChunkBlocks);
        for (int64_t m = 0; m < M; m += kMaxTokens) {
            const int8_t* qm = q + m * ldq;
            int32_t* am = acc + m * ldc;
            switch (std::min<int64_t>(kMaxTokens, M - m)) {
                case 1: token_tile<1>(packed, K, N, n0, n1, b0, b1, qm, ldq, am, ldc); break;
                case 2: token_tile<2>(packed, K, N, n0, n1, b0, b1, qm, ldq, am, ldc); break;
                case 3: token_tile<3>(packed, K, N, n0, n1, b0, b1, qm, ldq, am, ldc); break;
                default: token_tile<4>(packed, K, N, n0, n1, b0, b1, qm, ldq, am, ldc); break;
            }
        }
    }
}

}  // namespace

namespace tl2 {
Kernel avx512_kernel() {
    return __builtin_cpu_supports("avx512vbmi2") ? ternary_tl2_avx512 : avx2_kernel();
}
}  // namespace tl2

}  // namespace ternary
