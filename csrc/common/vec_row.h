#pragma once
// Float32 row primitives of the CPU kernels, compiled once per x86 ISA level (AVX-512, AVX2,
// baseline) and picked at load time. Lane-wise accumulators keep the summation order fixed, so
// results are bit-identical run to run whatever the thread count.
#include <cstdint>

namespace objx {

// Rows per parallel task of a CPU kernel: enough work (per_task logits) to amortise scheduling
// when rows are short.
inline int64_t row_grain(int64_t cols, int64_t per_task = 16384) {
  return per_task / (cols > 1 ? cols : 1) > 1 ? per_task / (cols > 1 ? cols : 1) : 1;
}

// max_j x_j over a piece, ignoring NaN (a NaN reaches the sum of exponentials instead).
float vec_max(const float* x, int64_t n);
// sum_j exp(x_j - shift); exact 0 for x_j = -inf, NaN for NaN x_j.
float vec_sum_exp(const float* x, int64_t n, float shift);
// sum_j x_j.
float vec_sum(const float* x, int64_t n);
// out_j = exp(x_j) (float32 within ~2 ulp; 0 below -87.5, so no subnormal results; float64 exact).
void vec_exp(const float* x, int64_t n, float* out);
void vec_exp(const double* x, int64_t n, double* out);
// out_j = exp(x_j) - 1 (float32 within a few ulp, relative, also near 0; +inf above 88.7; float64 exact).
void vec_expm1(const float* x, int64_t n, float* out);
void vec_expm1(const double* x, int64_t n, double* out);
// out_j = a * exp((x_j - ref) + shift) - c (math::SoftmaxRef: ref = lse, shift = 0, or the target's
// logit and log p_y).
void vec_scaled_softmax(const float* x, int64_t n, float ref, float shift, float a, float c, float* out);

// out_j = g (p_j ((x_j - lse_x) - (y_j - lse_y) - d)), p_j = exp(x_j - lse_x), 0 where p_j is 0: KL(p || q)'s
// gradient d/dx_j times g, for D = d (SPEC §3.4's table), in the kernels' own order of operations.
void vec_kl_grad(const float* x, const float* y, int64_t n, float lse_x, float lse_y, float d, float g, float* out);
// out_j = g (1/2 (p_j bc - sqrt(p_j q_j))), sqrt(p_j q_j) = exp(((x_j - lse_x) + (y_j - lse_y)) / 2): the
// Hellinger distance's gradient times g, BC = bc, in the kernels' own order of operations.
void vec_hellinger_grad(const float* x, const float* y, int64_t n, float lse_x, float lse_y, float bc, float g,
                        float* out);

// Folds x[0, n) into an online log-sum-exp state (running max, sum of exp(x - max)); returns the
// piece's own max (-inf for n <= 0; NaN ignored, as vec_max).
float lse_absorb(float& max, float& sum, const float* x, int64_t n);
double lse_absorb(double& max, double& sum, const double* x, int64_t n);
// lse_absorb that also folds y, weighted by the same exponentials, into `weighted` (sum of
// exp(x_j - max) y_j, in float64 lanes; an x_j of -inf adds nothing whatever y_j is).
void lse_absorb_weighted(float& max, float& sum, double& weighted, const float* x, const float* y, int64_t n);
void lse_absorb_weighted(double& max, double& sum, double& weighted, const double* x, const double* y, int64_t n);
// lse_absorb_weighted of x with the weights x_j - y_j into (max_x, sum_x, weighted), and lse_absorb of y
// into (max_y, sum_y): KL(softmax(x) || softmax(y))'s sums from the two rows, without a buffer of x - y.
void lse_absorb_log_ratio(float& max_x, float& sum_x, double& weighted, float& max_y, float& sum_y, const float* x,
                          const float* y, int64_t n);
// lse_absorb of x into (max_x, sum_x) and of y into (max_y, sum_y), and into `root` the sum of
// sqrt(e^(x_j - max_x) e^(y_j - max_y)) = e^((x_j + y_j)/2 - (max_x + max_y)/2) (float64 lanes), rescaled
// as the maxima move: the log-sum-exp of (x + y)/2 from the two exps the others take. A term whose
// product is below float's smallest normal (both logits ~44 below their maxima) adds nothing.
void lse_absorb_root(float& max_x, float& sum_x, float& max_y, float& sum_y, double& root, const float* x,
                     const float* y, int64_t n);
void lse_absorb_root(double& max_x, double& sum_x, double& max_y, double& sum_y, double& root, const double* x,
                     const double* y, int64_t n);

}  // namespace objx
