// Scalar sampler hot path (csrc/sample.h). Built with -ffp-contract=off (CMakeLists.txt): a
// fused multiply-add would round differently from numpy's separate float32 ops.
#include "sample.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

namespace ternary {

namespace {

void penalize(const float* logits, int64_t V, const int64_t* window, const int32_t* counts,
              int64_t m, double repetition, double frequency, double presence, float* work) {
    std::memcpy(work, logits, size_t(V) * sizeof(float));
    const float r = float(repetition), f = float(frequency), p = float(presence);
    for (int64_t j = 0; j < m; ++j) {
        float v = logits[window[j]];  // the original value: a duplicate writes the same result
        if (repetition != 1.0) v = v < 0 ? v * r : v / r;
        if (frequency != 0.0) {
            const float c = float(counts[j]) * f;
            v = v - c;
        }
        if (presence != 0.0) v = v - p;
        work[window[j]] = v;
    }
}

constexpr int64_t kBlock = 32;

// The maxima of groups of values of x[0 .. V) (each value in one group), appended to g; false
// if a value is NaN. Groups: lane j of each run of kLanes * kLanes values takes every kLanes-th
// value (an element-wise max over lanes, which vectorizes), then each leftover value alone.
constexpr int64_t kLanes = 16;
bool group_maxima(const float* x, int64_t V, std::vector<float>& g) {
    const int64_t run = kLanes * kLanes, full = V / run * run;
    g.reserve(size_t(full / kLanes + (V - full)));
    int nan = 0;
    for (int64_t r = 0; r < full; r += run) {
        float lane[kLanes];
        int32_t bad[kLanes] = {};  // lane-wise NaN flags: keeps both loops element-wise
        for (int64_t j = 0; j < kLanes; ++j) lane[j] = x[r + j];
        for (int64_t i = r; i < r + run; i += kLanes)
            for (int64_t j = 0; j < kLanes; ++j) {
                const float v = x[i + j];
                bad[j] |= v != v;
                lane[j] = v > lane[j] ? v : lane[j];
            }
        for (int64_t j = 0; j < kLanes; ++j) {
            nan |= bad[j];
            g.push_back(lane[j]);
        }
    }
    for (int64_t i = full; i < V; ++i) {
        nan |= x[i] != x[i];
        g.push_back(x[i]);
    }
    return !nan;
}

inline bool any_at_least(const float* x, float t) {
    int hit = 0;
    for (int64_t j = 0; j < kBlock; ++j) hit |= x[j] >= t;
    return hit != 0;
}

// numpy's float order (NaN last), for its searchsorted
inline bool np_less(double a, double b) { return a < b || (b != b && a == a); }

}  // namespace

int64_t sample_top_k(const float* logits, int64_t V, const int64_t* window, const int32_t* counts,
                     int64_t m, double repetition, double frequency, double presence, int64_t k,
                     float inv_t, float* work, int64_t* ids, float* scaled) {
    penalize(logits, V, window, counts, m, repetition, frequency, presence, work);
    // The k-th largest without sorting the vocabulary: the k-th largest of group maxima is a
    // lower bound t0 (k groups each hold a value >= it), so only values >= t0 are candidates.
    std::vector<float> gmax;
    if (!group_maxima(work, V, gmax)) return -1;  // a NaN
    float t0 = -INFINITY;
    if (int64_t(gmax.size()) >= k) {
        std::nth_element(gmax.begin(), gmax.begin() + (k - 1), gmax.end(), std::greater<float>());
        t0 = gmax[size_t(k - 1)];
    }
    int64_t n = 0;  // ascending ids: the stable sort below keeps ties in id order
    for (int64_t b = 0; b < V; b += kBlock) {
        const int64_t e = std::min(V, b + kBlock);
        if (e - b == kBlock && !any_at_least(work + b, t0)) continue;
        for (int64_t i = b; i < e; ++i)
            if (work[i] >= t0) ids[n++] = i;
    }
    std::vector<float> vals(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) vals[size_t(i)] = work[ids[i]];
    std::nth_element(vals.begin(), vals.begin() + (k - 1), vals.end(), std::greater<float>());
    const float kth = vals[size_t(k - 1)];
    int64_t kept = 0;  // the k largest and the ties at the k-th, still in id order
    for (int64_t i = 0; i < n; ++i)
        if (work[ids[i]] >= kth) ids[kept++] = ids[i];
    n = kept;
    std::stable_sort(ids, ids + n, [work](int64_t a, int64_t b) { return work[a] > work[b]; });
    const float s0 = work[ids[0]] * inv_t;
    for (int64_t i = 0; i < n; ++i) {
        const float s = work[ids[i]] * inv_t;
        scaled[i] = s - s0;
    }
    return n;
}

int64_t sample_cut_draw(const float* probs, int64_t n, double top_p, double min_p, double u01,
                        int64_t block_draw, double* csum) {
    double acc = 0.0;
    for (int64_t i = 0; i < n; ++i) csum[i] = acc += double(probs[i]);
    int64_t keep = n;
    const bool use_top_p = top_p < 1.0;
    if (use_top_p) {  // 1 + searchsorted(csum[:-1], mass, side="left")
        const double mass = top_p * csum[n - 1];
        keep = 1 + (std::lower_bound(csum, csum + n - 1, mass, np_less) - csum);
    }
    if (min_p > 0) {  // float32(min_p) * probs[0], compared in float32 (numpy's weak Python float)
        const float thr = float(min_p) * probs[0];
        int64_t c = 0;
        for (int64_t i = 0; i < keep; ++i) c += probs[i] >= thr;
        keep = std::min(keep, c);
    }
    if (keep < 1) return -2;  // NaN probabilities: nothing to draw from
    if (!use_top_p && keep > block_draw) return -1;
    const double u = u01 * csum[keep - 1];  // searchsorted(csum, u, side="right")
    const int64_t i = std::upper_bound(csum, csum + keep, u, np_less) - csum;
    return std::min(i, keep - 1);
}

}  // namespace ternary
