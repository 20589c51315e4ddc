// NEON kernels against the scalar reference, bit for bit; cross-compiled for aarch64 and run
// under qemu-user by tests/neon/run.sh. Prints "<n> passed, <m> failed"; exit status 1 on failure.
//
// The table entries are called directly over the N, K, M sweeps, and the ops layer (thread pool,
// dispatch, epilogue) runs with 1 and 2 threads on the shapes where it splits rows.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "ternary.h"

using namespace ternary;

namespace {

int passed = 0, failed = 0;

void expect(bool ok, const char* what, long a, long b, long c) {
    if (ok) {
        ++passed;
    } else {
        ++failed;
        if (failed <= 20) std::printf("FAIL %s (%ld, %ld, %ld)\n", what, a, b, c);
    }
}

std::mt19937 rng(12345);

std::vector<int8_t> ternary_weights(int64_t n, int64_t k) {
    std::vector<int8_t> w(size_t(n * k));
    for (auto& v : w) v = int8_t(int(rng() % 3) - 1);
    return w;
}

// Random int8 with -128 and 127 over-represented; every other row (random phase) holds no -128,
// like quantize_rows' output: kernels may treat those rows differently.
std::vector<int8_t> activations(int64_t m, int64_t k) {
    std::vector<int8_t> q(size_t(m * k));
    const int64_t phase = rng() % 2;
    for (size_t i = 0; i < q.size(); ++i) {
        const unsigned r = rng() % 10;
        int8_t v = r == 0 ? int8_t(-128) : r == 1 ? int8_t(127) : int8_t(rng());
        if (int64_t(i) / k % 2 == phase && v == -128) v = -127;
        q[i] = v;
    }
    return q;
}

using TernaryEntry = void (*)(const uint8_t*, int64_t, int64_t, int64_t, const int8_t*, int64_t,
                              int64_t, int32_t*, int64_t);
TernaryEntry entry(const KernelTable& t, Format fmt) {
    return fmt == Format::TL1 ? t.ternary_tl1 : fmt == Format::T2 ? t.ternary_t2 : t.ternary_t1;
}

// One matmul through both tables' entries; q is an exact-size heap copy, so a read past K
// lands outside the allocation.
void check_matmul(Format fmt, const std::vector<int8_t>& w, int64_t n, int64_t k,
                  const std::vector<int8_t>& qv, int64_t m, const char* what) {
    std::vector<uint8_t> packed(size_t(n) * row_bytes(fmt, k));
    pack_rows(fmt, w.data(), n, k, packed.data());
    auto* q = new int8_t[size_t(m * k)];
    std::memcpy(q, qv.data(), size_t(m * k));
    std::vector<int32_t> got(size_t(m * n), -7), want(size_t(m * n), -9);
    const KernelTable &neon = neon_kernels(), &ref = ref_kernels();
    entry(neon, fmt)(packed.data(), k, 0, n, q, k, m, got.data(), n);
    entry(ref, fmt)(packed.data(), k, 0, n, q, k, m, want.data(), n);
    delete[] q;
    expect(got == want, what, long(n), long(k), long(m));
}

void check_random(Format fmt, int64_t n, int64_t k, int64_t m, const char* what) {
    check_matmul(fmt, ternary_weights(n, k), n, k, activations(m, k), m, what);
}

const int64_t kSizes[] = {1, 3, 31, 96, 200, 255, 1003, 2560, 6912};
const int64_t kTokens[] = {1, 2, 7, 64};

void matmul_sweeps(Format fmt) {
    const char* f = fmt == Format::TL1 ? "tl1" : fmt == Format::T2 ? "t2" : "t1";
    char what[64];
    std::snprintf(what, sizeof what, "%s N sweep", f);
    for (int64_t n : kSizes)
        for (int64_t k : {31, 1003})
            for (int64_t m : {1, 7}) check_random(fmt, n, k, m, what);
    std::snprintf(what, sizeof what, "%s K sweep", f);
    for (int64_t k : kSizes)
        for (int64_t n : {3, 96})
            for (int64_t m : kTokens) check_random(fmt, n, k, m, what);
    for (int64_t k : {64, 256, 257, 320, 321})
        for (int64_t m : {1, 3}) check_random(fmt, 5, k, m, what);
    std::snprintf(what, sizeof what, "%s M sweep", f);
    for (int64_t m = 1; m <= 11; ++m) check_random(fmt, 31, 1003, m, what);
    std::snprintf(what, sizeof what, "%s model shape", f);
    check_random(fmt, 2560, 2560, 1, what);
    check_random(fmt, 512, 6912, 7, what);

    std::snprintf(what, sizeof what, "%s extremes", f);
    for (int64_t k : {1, 63, 64, 65, 1003, 6912}) {
        for (int value : {-128, 127}) {
            const std::vector<int8_t> q(size_t(3 * k), int8_t(value));
            for (int weight : {-1, 1})
                check_matmul(fmt, std::vector<int8_t>(size_t(5 * k), int8_t(weight)), 5, k, q, 3, what);
            check_matmul(fmt, ternary_weights(5, k), 5, k, q, 3, what);
        }
    }
    std::snprintf(what, sizeof what, "%s zero rows and weights", f);
    for (int64_t m : {1, 7}) {
        const int64_t n = 37, k = 1003;
        auto w = ternary_weights(n, k);
        auto q = activations(m, k);
        for (int64_t r = 0; r < n; r += 3) std::memset(&w[size_t(r * k)], 0, size_t(k));
        for (int64_t r = 0; r < m; r += 2) std::memset(&q[size_t(r * k)], 0, size_t(k));
        check_matmul(fmt, w, n, k, q, m, what);
        check_matmul(fmt, std::vector<int8_t>(size_t(n * k), 0), n, k, q, m, what);
    }
}

// Bytes the packer never writes (T2: both bits of a weight set; T1: codes 243..255) decode as
// in the reference. K is a whole number of blocks, so there is no padding.
void arbitrary_bytes() {
    for (Format fmt : {Format::T2, Format::T1, Format::TL1}) {
        for (int64_t m : {1, 5}) {
            const int64_t n = 9, k = 2560;
            std::vector<uint8_t> packed(size_t(n) * row_bytes(fmt, k));
            for (size_t i = 0; i < packed.size(); ++i)
                packed[i] = uint8_t(fmt == Format::T1 && i % 3 == 0 ? 243 + rng() % 13 : rng());
            const auto q = activations(m, k);
            std::vector<int32_t> got(size_t(m * n)), want(size_t(m * n));
            const KernelTable &neon = neon_kernels(), &ref = ref_kernels();
            entry(neon, fmt)(packed.data(), k, 0, n, q.data(), k, m, got.data(), n);
            entry(ref, fmt)(packed.data(), k, 0, n, q.data(), k, m, want.data(), n);
            expect(got == want, "arbitrary packed bytes", long(fmt), long(k), long(m));
        }
    }
}

// Through ops.cpp: dispatch picks NEON, the pool splits rows; 1 and 2 threads give the same
// int32 accumulators as the reference.
void ops_layer() {
    if (!set_active_isa("neon")) {
        expect(false, "neon is not in available_isas", 0, 0, 0);
        return;
    }
    for (Format fmt : {Format::T2, Format::T1, Format::TL1}) {
        for (int threads : {1, 2}) {
            set_num_threads(threads);
            for (int64_t m : {1, 7}) {
                const int64_t n = 1003, k = 2560;
                const auto w = ternary_weights(n, k);
                const auto q = activations(m, k);
                std::vector<uint8_t> packed(size_t(n) * row_bytes(fmt, k));
                pack_rows(fmt, w.data(), n, k, packed.data());
                std::vector<int32_t> got(size_t(m * n)), want(size_t(m * n));
                ternary_matmul_i32(fmt, packed.data(), n, k, q.data(), m, got.data());
                entry(ref_kernels(), fmt)(packed.data(), k, 0, n, q.data(), k, m, want.data(), n);
                expect(got == want, "ops ternary_matmul_i32", long(threads), long(k), long(m));
            }
        }
    }
    set_num_threads(1);
}

void quantize() {
    std::normal_distribution<float> normal(0.f, 1.f);
    for (int64_t k : {1, 3, 4, 7, 8, 9, 31, 96, 200, 255, 1003, 2560}) {
        for (int variant = 0; variant < 8; ++variant) {
            std::vector<float> x(static_cast<size_t>(k));
            const float spread = variant == 0 ? 1e-7f : float(1 << variant);
            for (auto& v : x) v = normal(rng) * spread;
            if (variant == 1) std::fill(x.begin(), x.end(), 0.f);
            if (variant == 2) x[size_t(k / 2)] = NAN;
            if (variant == 3) x[0] = INFINITY;
            if (variant == 4) {  // max |x| = 127 makes the scale exactly 1: ties at .5 go to even
                for (int64_t i = 0; i < k; ++i) x[size_t(i)] = float(i % 9) - 4.5f;
                x[0] = 127.f;
            }
            std::vector<int8_t> got(static_cast<size_t>(k)), want(static_cast<size_t>(k));
            const float gs = neon_kernels().quantize_row(x.data(), k, got.data());
            const float ws = ref_kernels().quantize_row(x.data(), k, want.data());
            expect(got == want && std::memcmp(&gs, &ws, sizeof gs) == 0, "quantize_row", long(k), variant, 0);
        }
    }
}

void pack_round_trip() {
    for (Format fmt : {Format::T2, Format::T1, Format::TL1}) {
        for (int64_t n : {3, 16, 35}) {
            for (int64_t k : kSizes) {
                const auto w = ternary_weights(n, k);
                std::vector<uint8_t> packed(size_t(n) * row_bytes(fmt, k));
                pack_rows(fmt, w.data(), n, k, packed.data());
                std::vector<int8_t> back(size_t(n * k));
                unpack_rows(fmt, packed.data(), n, k, back.data());
                expect(back == w, "pack round trip", long(fmt), long(n), long(k));
            }
        }
    }
}

// TL1: odd N across 16-row tiles, K off the 8-weight group and its int16 chunks, M 1..17.
void tl1_sweeps() {
    for (int64_t k : {1, 2, 3, 5, 127, 129, 255, 641, 2560, 6912})
        for (int64_t n : {1, 17, 33, 67})
            for (int64_t m : {1, 4, 5, 17}) check_random(Format::TL1, n, k, m, "tl1 odd sizes");
    for (int64_t n = 1; n <= 67; n += 2) check_random(Format::TL1, n, 129, 1 + n % 5, "tl1 N 1..67");
    for (int64_t m = 1; m <= 17; ++m) check_random(Format::TL1, 33, 641, m, "tl1 M 1..17");
}

// Q4 head rows: random bytes and sub-scales (every nibble and 0..127), int8 activations with
// -128 / 127 over-represented, group sums as q4_linear makes them; K a multiple of 128.
void q4_rows() {
    for (int64_t k : {128, 256, 1024, 2560, 16384}) {
        for (int64_t m : {1, 3}) {
            const int64_t n = 13, g = k / kQ4Group;
            std::vector<uint8_t> packed(size_t(n * g * kQ4GroupBytes));
            for (auto& b : packed) b = uint8_t(rng());
            std::vector<int16_t> sub(size_t(n * g));
            for (auto& s : sub) s = int16_t(rng() % (kQ4MaxSub + 1));
            const auto q = activations(m, k);
            std::vector<int16_t> qsum(size_t(m * g), 0);
            for (int64_t i = 0; i < m * k; ++i) qsum[size_t(i / kQ4Group)] += q[size_t(i)];
            std::vector<int32_t> got(size_t(m * n), -7), want(size_t(m * n), -9);
            neon_kernels().q4_rows(packed.data(), sub.data(), k, 0, n, q.data(), qsum.data(), m, got.data(), n);
            ref_kernels().q4_rows(packed.data(), sub.data(), k, 0, n, q.data(), qsum.data(), m, want.data(), n);
            expect(got == want, "q4_rows", long(n), long(k), long(m));
        }
    }
    // Largest magnitude: every weight -8 at sub 127 against 127 (K = kQ4MaxK).
    const int64_t k = kQ4MaxK, g = k / kQ4Group;
    const std::vector<uint8_t> packed(size_t(g * kQ4GroupBytes), 0);
    const std::vector<int16_t> sub(size_t(g), kQ4MaxSub), qsum(size_t(g), 127 * kQ4Group);
    const std::vector<int8_t> q(size_t(k), 127);
    int32_t got = 0, want = 1;
    neon_kernels().q4_rows(packed.data(), sub.data(), k, 0, 1, q.data(), qsum.data(), 1, &got, 1);
    ref_kernels().q4_rows(packed.data(), sub.data(), k, 0, 1, q.data(), qsum.data(), 1, &want, 1);
    expect(got == want && want == -8 * 127 * 127 * int32_t(k), "q4_rows extreme", 0, long(k), 1);
}

// TL2: the NEON table's ternary_tl2 against the reference over odd N (short last tiles), K
// (partial blocks), M (token tiles of 1..4), sub-ranges of rows, arbitrary bytes (magnitudes 14
// and 15 read as zero weights) and extreme activations.
void tl2_sweeps() {
    const KernelTable &neon = neon_kernels(), &ref = ref_kernels();
    auto run = [&](const std::vector<uint8_t>& packed, int64_t n, int64_t k, const std::vector<int8_t>& qv,
                   int64_t m, int64_t n0, int64_t n1, const char* what) {
        auto* q = new int8_t[size_t(m * k)];
        std::memcpy(q, qv.data(), size_t(m * k));
        std::vector<int32_t> got(size_t(m * n), -7), want(size_t(m * n), -7);
        neon.ternary_tl2(packed.data(), k, n, n0, n1, q, k, m, got.data(), n);
        ref.ternary_tl2(packed.data(), k, n, n0, n1, q, k, m, want.data(), n);
        delete[] q;
        expect(got == want, what, long(n), long(k), long(m));
    };
    for (int64_t n : {1, 3, 31, 33, 67})
        for (int64_t k : {1, 2, 3, 5, 47, 49, 127, 641, 2560})
            for (int64_t m : {1, 2, 3, 4, 5, 9}) {
                const auto w = ternary_weights(n, k);
                std::vector<uint8_t> packed(size_t(n) * row_bytes(Format::TL2, k));
                pack_rows(Format::TL2, w.data(), n, k, packed.data());
                const auto q = activations(m, k);
                run(packed, n, k, q, m, 0, n, "tl2 sweep");
                if (n > 32) run(packed, n, k, q, m, 16, n - 1, "tl2 row range");
            }
    for (int64_t n : {5, 32, 67}) {
        const int64_t k = 150;
        std::vector<uint8_t> packed(size_t(n) * row_bytes(Format::TL2, k));
        for (auto& b : packed) b = uint8_t(rng());
        run(packed, n, k, activations(3, k), 3, 0, n, "tl2 arbitrary bytes");
    }
    for (int v : {-128, 127}) {
        const int64_t n = 35, k = 6912;
        std::vector<int8_t> w(size_t(n * k));
        for (int64_t r = 0; r < n; ++r)
            for (int64_t i = 0; i < k; ++i) w[size_t(r * k + i)] = int8_t(r % 3 == 0 ? 1 : r % 3 == 1 ? -1 : (i % 2 ? 0 : -1));
        std::vector<uint8_t> packed(size_t(n) * row_bytes(Format::TL2, k));
        pack_rows(Format::TL2, w.data(), n, k, packed.data());
        run(packed, n, k, std::vector<int8_t>(size_t(2 * k), int8_t(v)), 2, 0, n, "tl2 extremes");
    }
}

}  // namespace

int main() {
    pack_round_trip();
    quantize();
    matmul_sweeps(Format::T2);
    matmul_sweeps(Format::T1);
    tl2_sweeps();
    matmul_sweeps(Format::TL1);
    tl1_sweeps();
    arbitrary_bytes();
    ops_layer();
    q4_rows();
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
