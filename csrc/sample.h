// The sampler's hot path (engine/runtime/sampling.py, Sampler.next with top-k), scalar C++.
// Plain C++17, no Python headers. Every float operation is the one numpy performs on the same
// path (float32 products and differences, float64 running sums), in the same order, so a seed
// gives the same token as the numpy code; the exp of the candidates stays in numpy (its SIMD
// exp is not libm's expf).
#pragma once

#include <cstdint>

namespace ternary {

// Penalties over the window, then the top-k candidates (k largest values plus the ties at the
// k-th), scaled by the temperature.
//   logits f32 [V] (read only); work f32 [V] receives the penalized logits.
//   window int64 [m]: ids in [0, V) (duplicates allowed); counts int32 [m]: each entry's count
//   in the window (frequency penalty). A negative logit is multiplied by repetition, a
//   positive one divided by it; then counts * frequency and presence are subtracted (only the
//   penalties that are on: repetition != 1, frequency != 0, presence != 0).
//   ids int64 [V], scaled f32 [V]: the candidates by value descending, ties by ascending id;
//   scaled[i] = x[ids[i]] * inv_t - x[ids[0]] * inv_t (each product rounded to float32).
// Returns the number of candidates n (k <= n <= V), or -1 if a penalized logit is NaN
// (the caller falls back to numpy, whose NaN ordering this does not copy). Needs 0 < k < V.
int64_t sample_top_k(const float* logits, int64_t V, const int64_t* window, const int32_t* counts,
                     int64_t m, double repetition, double frequency, double presence, int64_t k,
                     float inv_t, float* work, int64_t* ids, float* scaled);

// The top-p / min-p cut of n descending unnormalized probabilities and one draw from u01 in
// [0, 1): csum = float64 running sum of probs; with top_p < 1 the nucleus keeps token i while
// csum[i - 1] < top_p * csum[n - 1]; with min_p > 0 only probs >= float32(min_p) * probs[0]
// stay; then the first i with csum[i] > u01 * csum[n' - 1] (at most n' - 1).
// Returns that index, or -1 when top-p is off and more than block_draw tokens are left (the
// caller draws over them per block, as sampling.draw does, with the same u01), or -2 when no
// token is left (NaN probabilities). csum: f64 [>= n] scratch.
int64_t sample_cut_draw(const float* probs, int64_t n, double top_p, double min_p, double u01,
                        int64_t block_draw, double* csum);

}  // namespace ternary
