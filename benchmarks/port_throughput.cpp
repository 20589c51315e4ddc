// Throughput of the AVX-512 instructions the ternary kernels are built from, alone and in the
// mixes the kernels issue: the evidence behind "what bounds it" in benchmarks/RESULTS.md.
//
//   c++ -O2 -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx512vbmi -mavx512vbmi2 -mgfni \
//       -o /tmp/port_throughput benchmarks/port_throughput.cpp && /tmp/port_throughput
//
// Each row runs a group of instructions 8 times per loop iteration on 8 independent registers
// (no dependency chain limits it) and prints cycles per group. A cycle is timed on a chain of
// dependent scalar adds (one per cycle on every x86 core), so the figures hold whatever the clock.
#include <chrono>
#include <cstdio>

// A 64-byte aligned table for the memory operands (a stack slot may straddle two cache lines).
extern "C" {
alignas(64) char tl2_table[64];
}

namespace {

constexpr long kIters = 10'000'000;

template <class F>
double seconds(F body) {
    const auto t0 = std::chrono::steady_clock::now();
    body();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double cycle_seconds() {
    double best = 1e9;
    for (int rep = 0; rep < 3; ++rep) {
        const double s = seconds([] {
            long x = 0;
            for (long i = 0; i < kIters; ++i)
                asm volatile("add $1, %0\n add $1, %0\n add $1, %0\n add $1, %0\n"
                             "add $1, %0\n add $1, %0\n add $1, %0\n add $1, %0\n" : "+r"(x));
        });
        best = best < s ? best : s;
    }
    return best / (8.0 * kIters);
}

// zmm16/zmm17 are read-only inputs, zmm0-7 and zmm20-27 the 8 chains' outputs, k1 a fixed mask,
// k2-k7 written; kmovq reads a stack slot below the red zone's top (always mapped).
#define CLOBBERS                                                                                  \
    "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm20", "zmm21", "zmm22",     \
        "zmm23", "zmm24", "zmm25", "zmm26", "zmm27", "k2", "k3", "k4", "k5", "k6", "k7"
#define X8(G) G("0", "2") G("1", "3") G("2", "4") G("3", "5") G("4", "6") G("5", "7") G("6", "2") G("7", "3")
#define RUN(name, G)                                                                              \
    report(name, seconds([] {                                                                     \
               for (long i = 0; i < kIters; ++i) asm volatile(X8(G) ::: CLOBBERS);                \
           }))

#define DP(r, k) "vpdpbusd %%zmm16, %%zmm17, %%zmm" r "\n"
#define TEST(r, k) "vptestmb %%zmm16, %%zmm17, %%k" k "\n"
#define KMOV(r, k) "kmovq -64(%%rsp), %%k" k "\n"
#define SAD(r, k) "vpsadbw %%zmm16, %%zmm17, %%zmm2" r "\n"
#define SHUF(r, k) "vpshufb %%zmm16, %%zmm17, %%zmm2" r "\n"
#define PERM2(r, k) "vpermi2b %%zmm16, %%zmm17, %%zmm2" r "\n"
#define GF2(r, k) "vgf2p8affineqb $0, %%zmm16, %%zmm17, %%zmm2" r "\n"
#define TERN(r, k) "vpternlogd $0xe4, %%zmm16, %%zmm17, %%zmm2" r "\n"
#define MOVZ(r, k) "vmovdqu8 %%zmm16, %%zmm2" r "%{%%k1%}%{z%}\n"
#define MOVM(r, k) "vmovdqu8 %%zmm17, %%zmm2" r "%{%%k1%}\n"
#define ADD(r, k) "vpaddb %%zmm16, %%zmm17, %%zmm2" r "\n"
#define PERMB(r, k) "vpermb %%zmm16, %%zmm17, %%zmm2" r "\n"
#define PERMW(r, k) "vpermw %%zmm16, %%zmm17, %%zmm2" r "\n"
#define ADDW(r, k) "vpaddw %%zmm16, %%zmm17, %%zmm2" r "\n"
#define SLLW(r, k) "vpsllw $4, %%zmm16, %%zmm2" r "\n"
#define LOADT(r, k) "vmovdqu64 -128(%%rsp), %%zmm2" r "\n"
#define SHUF_ADDW(r, k) SHUF(r, k) ADDW(r, k)
#define DP_TEST(r, k) DP(r, k) TEST(r, k)
#define DP_KMOV(r, k) DP(r, k) KMOV(r, k)
#define DP_SAD(r, k) DP(r, k) SAD(r, k)
#define DP_SHUF(r, k) DP(r, k) SHUF(r, k)
#define DP_TERN(r, k) DP(r, k) TERN(r, k)
#define DP_ADD(r, k) DP(r, k) ADD(r, k)
#define DP_PERMW(r, k) DP(r, k) "vpermw %%zmm16, %%zmm17, %%zmm2" r "\n"
// One 64-weight plane of each kernel's inner loop:
#define T2_GEMV(r, k) KMOV(r, "2") KMOV(r, "3") MOVZ(r, k) MOVM(r, k) DP(r, k)      // avx512.cpp
#define T1_GEMV(r, k) TEST(r, "2") TEST(r, "3") MOVZ(r, k) MOVM(r, k) DP(r, k)      // + decode
// TL2 (table lookup): vpermw looks up 32 rows' codes in a 32-entry int16 table (register or
// memory operand); a shift (vpsrlw, or vpshrdw for a code straddling two words) makes the next
// group's index vector; vpaddw accumulates.
#define PERMW(r, k) "vpermw %%zmm16, %%zmm17, %%zmm2" r "\n"
#define PERMW_M(r, k) "vpermw tl2_table(%%rip), %%zmm17, %%zmm2" r "\n"
#define ADDW(r, k) "vpaddw %%zmm16, %%zmm2" r ", %%zmm2" r "\n"
#define SRLW(r, k) "vpsrlw $5, %%zmm16, %%zmm" r "\n"
#define SHRDW(r, k) "vpshrdw $13, %%zmm16, %%zmm17, %%zmm" r "\n"
#define PERMW_ADD(r, k) PERMW(r, k) ADDW(r, k)
#define PERMW_SRL(r, k) PERMW(r, k) SRLW(r, k)
#define LOADZ(r, k) "vmovdqu64 tl2_table(%%rip), %%zmm" r "\n"
#define PERMW_R(r, k) "vpermw %%zmm" r ", %%zmm17, %%zmm2" r "\n"
#define LOAD_2PERMW(r, k) LOADZ(r, k) PERMW_R(r, k) ADDW(r, k) PERMW_R(r, k) ADDW(r, k)
#define LOAD_4PERMW(r, k) LOAD_2PERMW(r, k) PERMW_R(r, k) ADDW(r, k) PERMW_R(r, k) ADDW(r, k)
#define TL2_GEMV(r, k) SRLW(r, k) PERMW_M(r, k) ADDW(r, k)             // tl2_avx512.cpp, 1 token
#define TL2_TOKEN(r, k) PERMW_M(r, k) ADDW(r, k)                        // each further token
// TL1 (tl1_avx512.cpp), per 128 weights = one 32-byte unit of 16 rows x 4 pairs: the decode
// (vpermb, vpxord, vpsllw, vpsrlw, 2 vpternlogd) once per block of tokens, then per token a table
// load and 2 x (vpshufb, vpaddw).
#define TL1_DECODE(r, k) PERMB(r, k) "vpxord %%zmm16, %%zmm17, %%zmm2" r "\n" SLLW(r, k)       \
    "vpsrlw $4, %%zmm17, %%zmm2" r "\n" TERN(r, k) TERN(r, k)
#define TL1_TOKEN(r, k) LOADT(r, k) SHUF(r, k) ADDW(r, k) SHUF(r, k) ADDW(r, k)
#define TL1_GEMV(r, k) TL1_DECODE(r, k) TL1_TOKEN(r, k)
#define TL1_M8(r, k) TL1_DECODE(r, k) TL1_TOKEN(r, k) TL1_TOKEN(r, k) TL1_TOKEN(r, k)         \
    TL1_TOKEN(r, k) TL1_TOKEN(r, k) TL1_TOKEN(r, k) TL1_TOKEN(r, k) TL1_TOKEN(r, k)
#define GEMM_TOKEN(r, k) "vpxord %%zmm16, %%zmm17, %%zmm2" r "\n" ADD(r, k) DP(r, k)  // xor, and, dp

double g_cycle;

void report(const char* name, double s) {
    std::printf("%-46s %5.2f cycles\n", name, s / (8.0 * kIters) / g_cycle);
}

}  // namespace

int main() {
    g_cycle = cycle_seconds();
    std::printf("cycle %.3f ns (%.2f GHz); cycles per group of instructions, zmm unless noted\n",
                g_cycle * 1e9, 1e-9 / g_cycle);
    asm volatile("kxnorq %%k1, %%k1, %%k1" ::: "k1");
    RUN("vpdpbusd", DP);
    RUN("vptestmb -> k", TEST);
    RUN("kmovq k, m64", KMOV);
    RUN("vpsadbw", SAD);
    RUN("vpshufb", SHUF);
    RUN("vpermi2b", PERM2);
    RUN("vgf2p8affineqb", GF2);
    RUN("vpternlogd", TERN);
    RUN("vmovdqu8 {k}{z}", MOVZ);
    RUN("vpaddb", ADD);
    RUN("vpermb", PERMB);
    RUN("vpermw", PERMW);
    RUN("vpaddw", ADDW);
    RUN("vpsllw imm", SLLW);
    RUN("vmovdqu64 zmm, m512 (L1)", LOADT);
    RUN("vpshufb + vpaddw", SHUF_ADDW);
    RUN("vpdpbusd + vptestmb", DP_TEST);
    RUN("vpdpbusd + kmovq m64", DP_KMOV);
    RUN("vpdpbusd + vpsadbw", DP_SAD);
    RUN("vpdpbusd + vpshufb", DP_SHUF);
    RUN("vpdpbusd + vpternlogd", DP_TERN);
    RUN("vpdpbusd + vpaddb", DP_ADD);
    RUN("T2 GEMV plane: 2 kmovq, 2 masked moves, dpbusd", T2_GEMV);
    RUN("T1 GEMV plane: 2 vptestmb, 2 masked moves, dpbusd", T1_GEMV);
    RUN("GEMM token x plane: 2 logic ops, dpbusd", GEMM_TOKEN);
    RUN("vpermw (table in zmm)", PERMW);
    RUN("vpermw m512 (table in L1)", PERMW_M);
    RUN("vpsrlw imm", SRLW);
    RUN("vpshrdw imm", SHRDW);
    RUN("vpermw + vpaddw", PERMW_ADD);
    RUN("vpermw + vpsrlw", PERMW_SRL);
    RUN("vpdpbusd + vpermw", DP_PERMW);
    RUN("vmovdqu64 m512 (table load)", LOADZ);
    RUN("table load + 2 x (vpermw zmm, vpaddw)", LOAD_2PERMW);
    RUN("table load + 4 x (vpermw zmm, vpaddw)", LOAD_4PERMW);
    RUN("TL2 GEMV, 32 rows x 3 weights: vpsrlw, vpermw m512, vpaddw", TL2_GEMV);
    RUN("TL2 per extra token, 96 weights: vpermw m512, vpaddw", TL2_TOKEN);
    RUN("TL1 unit decode (128 weights): 6 ops", TL1_DECODE);
    RUN("TL1 unit x token: load, 2 vpshufb, 2 vpaddw", TL1_TOKEN);
    RUN("TL1 GEMV unit (128 weights): decode + 1 token", TL1_GEMV);
    RUN("TL1 M=8 unit (128 weights): decode + 8 tokens", TL1_M8);
}
