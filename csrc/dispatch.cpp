// Picks the best ISA once (cpuid + xgetbv); TERNARY_ISA=ref|avx2|avx512|neon overrides.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ternary.h"

#if defined(TERNARY_X86)
#include <cpuid.h>
#endif

namespace ternary {
namespace {

#if defined(TERNARY_X86)
struct X86Features {
    bool avx2 = false, avx512 = false;
};

X86Features detect_x86() {
    X86Features f;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12),
               f16c = c & (1u << 29);
    if (!osxsave || !avx) return f;
    // xgetbv: has the OS enabled saving of the YMM (bits 1-2) and ZMM/opmask (bits 5-7) state?
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    const bool ymm_os = (lo & 0x6) == 0x6, zmm_os = (lo & 0xe6) == 0xe6;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    const bool avx2 = b & (1u << 5), avx512f = b & (1u << 16), avx512bw = b & (1u << 30),
               avx512vl = b & (1u << 31), avx512vbmi = c & (1u << 1), avx512vnni = c & (1u << 11);
    f.avx2 = ymm_os && avx2 && fma && f16c;
    f.avx512 = f.avx2 && zmm_os && avx512f && avx512bw && avx512vl && avx512vbmi && avx512vnni;
    return f;
}
#endif

struct Registry {
    std::vector<const KernelTable*> tables;  // available here, best last
    std::vector<const char*> names;
    std::atomic<const KernelTable*> active{nullptr};

    Registry() {
        tables.push_back(&ref_kernels());
#if defined(TERNARY_X86)
        const X86Features f = detect_x86();
        if (f.avx2) tables.push_back(&avx2_kernels());
        if (f.avx512) tables.push_back(&avx512_kernels());
#endif
#if defined(TERNARY_NEON)
        tables.push_back(&neon_kernels());
#endif
        for (auto* t : tables) names.push_back(t->name);
        const KernelTable* chosen = tables.back();
        if (const char* env = std::getenv("TERNARY_ISA"); env && *env) {
            chosen = nullptr;
            for (auto* t : tables)
                if (std::strcmp(t->name, env) == 0) chosen = t;
            // An unknown or unavailable TERNARY_ISA falls back to the reference, never to an ISA
            // the CPU may lack; the Python layer reports it.
            if (!chosen) chosen = tables.front();
        }
        active.store(chosen);
    }
};

Registry& registry() {
    static Registry r;
    return r;
}

}  // namespace

const char* const* available_isas(int* count) {
    *count = int(registry().names.size());
    return registry().names.data();
}

const KernelTable& active_kernels() { return *registry().active.load(std::memory_order_acquire); }

bool set_active_isa(const char* name) {
    for (auto* t : registry().tables) {
        if (std::strcmp(t->name, name) == 0) {
            registry().active.store(t, std::memory_order_release);
            return true;
        }
    }
    return false;
}

}  // namespace ternary
