#include "common/vec_row.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace objx {
namespace {

constexpr int kLanes = 16;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OBJX_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define OBJX_ISA_CLONES
#endif

// exp(x) for x <= 88 within ~2 ulp (Cephes' single-precision polynomial), written without calls
// or branches so that the compiler vectorises the loops that use it. exp(-inf) = 0 exactly.
inline float exp_poly(float x) {
  const float xc = x < -87.5f ? -87.5f : (x > 88.0f ? 88.0f : x);
  // round(x / ln2) by the 1.5 * 2^23 trick; the low bits of t then hold n.
  const float t = xc * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t tb;
  std::memcpy(&tb, &t, sizeof tb);
  const int32_t ni = tb - 0x4B400000;  // bits of 12582912.0f
  const int32_t sb = (ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &sb, sizeof scale);
  const float y = p * scale;
  return x < -87.5f ? 0.0f : (x != x ? x : y);
}

// expm1(x): a Taylor polynomial on |x| < 1/2 (the 10th term is below 4e-10 of the result there),
// where exp(x) - 1 would cancel; exp_poly(x) - 1 elsewhere, which loses at most a bit or two.
inline float expm1_poly(float x) {
  float t = 1.0f + x * (1.0f / 9.0f);
  t = 1.0f + x * (1.0f / 8.0f) * t;
  t = 1.0f + x * (1.0f / 7.0f) * t;
  t = 1.0f + x * (1.0f / 6.0f) * t;
  t = 1.0f + x * (1.0f / 5.0f) * t;
  t = 1.0f + x * (1.0f / 4.0f) * t;
  t = 1.0f + x * (1.0f / 3.0f) * t;
  t = 1.0f + x * 0.5f * t;
  const float small = x * t;
  const float big = exp_poly(x) - 1.0f;
  const float y = (x < 0.5f && x > -0.5f) ? small : big;
  return x > 88.7f ? std::numeric_limits<float>::infinity() : y;
}

}  // namespace

OBJX_ISA_CLONES float vec_max(const float* x, int64_t n) {
  float acc[kLanes];
  for (int k = 0; k < kLanes; ++k) acc[k] = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] = x[i + k] > acc[k] ? x[i + k] : acc[k];
  float m = -std::numeric_limits<float>::infinity();
  for (int k = 0; k < kLanes; ++k) m = acc[k] > m ? acc[k] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

OBJX_ISA_CLONES float vec_sum_exp(const float* x, int64_t n, float shift) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += exp_poly(x[i + k] - shift);
  float tail = 0.0f;
  for (; i < n; ++i) tail += exp_poly(x[i] - shift);
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) acc[k] += acc[k + w];
  return acc[0] + tail;
}

OBJX_ISA_CLONES float vec_sum(const float* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += x[i + k];
  float tail = 0.0f;
  for (; i < n; ++i) tail += x[i];
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) acc[k] += acc[k + w];
  return acc[0] + tail;
}

OBJX_ISA_CLONES void vec_exp(const float* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = exp_poly(x[i]);
}

void vec_exp(const double* x, int64_t n, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp(x[i]);
}

OBJX_ISA_CLONES void vec_expm1(const float* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = expm1_poly(x[i]);
}

void vec_expm1(const double* x, int64_t n, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::expm1(x[i]);
}

OBJX_ISA_CLONES void vec_scaled_softmax(const float* x, int64_t n, float ref, float shift, float a, float c,
                                          float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a * exp_poly((x[i] - ref) + shift) - c;
}

OBJX_ISA_CLONES void vec_kl_grad(const float* x, const float* y, int64_t n, float lse_x, float lse_y, float d,
                                   float g, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float log_p = x[i] - lse_x, log_q = y[i] - lse_y, p = exp_poly(log_p);
    out[i] = g * (p == 0.0f ? 0.0f : p * (log_p - log_q - d));
  }
}

OBJX_ISA_CLONES void vec_hellinger_grad(const float* x, const float* y, int64_t n, float lse_x, float lse_y,
                                          float bc, float g, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float log_p = x[i] - lse_x, log_q = y[i] - lse_y;
    out[i] = g * (0.5f * (exp_poly(log_p) * bc - exp_poly(0.5f * (log_p + log_q))));
  }
}

float lse_absorb(float& max, float& sum, const float* x, int64_t n) {
  if (n <= 0) return -std::numeric_limits<float>::infinity();
  const float cm = vec_max(x, n);
  const float m = max > cm ? max : cm;
  const float shift = m == -std::numeric_limits<float>::infinity() ? 0.0f : m;
  const float rescale = max == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(max - shift);
  sum = sum * rescale + vec_sum_exp(x, n, shift);
  max = m;
  return cm;
}

namespace {

// The exps first, then both sums: one loop with the float64 weighted lanes and the exp did not vectorise.
OBJX_ISA_CLONES void sum_exp_weighted(const float* x, const float* y, int64_t n, float shift, float& sum,
                                      double& weighted) {
  constexpr int64_t kChunk = 256;
  float e[kChunk];
  float acc[kLanes] = {};
  double wacc[kLanes] = {};
  float tail = 0.0f;
  double wtail = 0.0;
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t m = n - start < kChunk ? n - start : kChunk;
    const float* xs = x + start;
    const float* ys = y + start;
    for (int64_t i = 0; i < m; ++i) e[i] = exp_poly(xs[i] - shift);
    int64_t i = 0;
    for (; i + kLanes <= m; i += kLanes)
      for (int k = 0; k < kLanes; ++k) {
        acc[k] += e[i + k];
        wacc[k] += static_cast<double>(e[i + k] == 0.0f ? 0.0f : e[i + k] * ys[i + k]);
      }
    for (; i < m; ++i) {
      tail += e[i];
      wtail += static_cast<double>(e[i] == 0.0f ? 0.0f : e[i] * ys[i]);
    }
  }
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) {
      acc[k] += acc[k + w];
      wacc[k] += wacc[k + w];
    }
  sum = acc[0] + tail;
  weighted = wacc[0] + wtail;
}

}  // namespace

void lse_absorb_weighted(float& max, float& sum, double& weighted, const float* x, const float* y, int64_t n) {
  if (n <= 0) return;
  const float cm = vec_max(x, n);
  const float m = max > cm ? max : cm;
  const float shift = m == -std::numeric_limits<float>::infinity() ? 0.0f : m;
  const float rescale = max == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(max - shift);
  float piece;
  double wpiece;
  sum_exp_weighted(x, y, n, shift, piece, wpiece);
  sum = sum * rescale + piece;
  weighted = weighted * rescale + wpiece;
  max = m;
}

void lse_absorb_weighted(double& max, double& sum, double& weighted, const double* x, const double* y, int64_t n) {
  if (n <= 0) return;
  double cm = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) cm = x[i] > cm ? x[i] : cm;
  const double m = max > cm ? max : cm;
  const double shift = m == -std::numeric_limits<double>::infinity() ? 0.0 : m;
  double piece = 0.0, wpiece = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double e = std::exp(x[i] - shift);
    piece += e;
    wpiece += e == 0.0 ? 0.0 : e * y[i];
  }
  const double rescale = max == -std::numeric_limits<double>::infinity() ? 0.0 : std::exp(max - shift);
  sum = sum * rescale + piece;
  weighted = weighted * rescale + wpiece;
  max = m;
}

namespace {

OBJX_ISA_CLONES void sum_exp_root(const float* x, const float* y, int64_t n, float sx, float sy, float& sum_x,
                                  float& sum_y, double& root) {
  constexpr int64_t kChunk = 256;
  float ex[kChunk], ey[kChunk], r[kChunk];
  float ax[kLanes] = {}, ay[kLanes] = {};
  double ar[kLanes] = {};
  float tx = 0.0f, ty = 0.0f;
  double tr = 0.0;
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t m = n - start < kChunk ? n - start : kChunk;
    for (int64_t i = 0; i < m; ++i) {
      ex[i] = exp_poly(x[start + i] - sx);
      ey[i] = exp_poly(y[start + i] - sy);
      const float prod = ex[i] * ey[i];
      r[i] = prod < std::numeric_limits<float>::min() ? 0.0f : std::sqrt(prod);
    }
    int64_t i = 0;
    for (; i + kLanes <= m; i += kLanes)
      for (int k = 0; k < kLanes; ++k) {
        ax[k] += ex[i + k];
        ay[k] += ey[i + k];
        ar[k] += static_cast<double>(r[i + k]);
      }
    for (; i < m; ++i) {
      tx += ex[i];
      ty += ey[i];
      tr += static_cast<double>(r[i]);
    }
  }
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) {
      ax[k] += ax[k + w];
      ay[k] += ay[k + w];
      ar[k] += ar[k + w];
    }
  sum_x = ax[0] + tx;
  sum_y = ay[0] + ty;
  root = ar[0] + tr;
}

OBJX_ISA_CLONES void sum_exp_log_ratio(const float* x, const float* y, int64_t n, float sx, float sy, float& sum_x,
                                       double& weighted, float& sum_y) {
  constexpr int64_t kChunk = 256;
  float ex[kChunk], ey[kChunk], w[kChunk];
  float ax[kLanes] = {}, ay[kLanes] = {};
  double aw[kLanes] = {};
  float tx = 0.0f, ty = 0.0f;
  double tw = 0.0;
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t m = n - start < kChunk ? n - start : kChunk;
    for (int64_t i = 0; i < m; ++i) {
      const float xi = x[start + i], yi = y[start + i];
      ex[i] = exp_poly(xi - sx);
      ey[i] = exp_poly(yi - sy);
      w[i] = ex[i] == 0.0f ? 0.0f : ex[i] * (xi - yi);
    }
    int64_t i = 0;
    for (; i + kLanes <= m; i += kLanes)
      for (int k = 0; k < kLanes; ++k) {
        ax[k] += ex[i + k];
        ay[k] += ey[i + k];
        aw[k] += static_cast<double>(w[i + k]);
      }
    for (; i < m; ++i) {
      tx += ex[i];
      ty += ey[i];
      tw += static_cast<double>(w[i]);
    }
  }
  for (int s = kLanes / 2; s > 0; s /= 2)
    for (int k = 0; k < s; ++k) {
      ax[k] += ax[k + s];
      ay[k] += ay[k + s];
      aw[k] += aw[k + s];
    }
  sum_x = ax[0] + tx;
  sum_y = ay[0] + ty;
  weighted = aw[0] + tw;
}

// The new running maximum of a state after a piece whose own maximum is `piece_max`, the shift its
// exps take (0 while there is none), and the factor its old sum takes.
template <typename T>
void move_max(T& max, T piece_max, T& shift, T& rescale) {
  const T m = max > piece_max ? max : piece_max;
  shift = m == -std::numeric_limits<T>::infinity() ? T(0) : m;
  rescale = max == -std::numeric_limits<T>::infinity() ? T(0) : std::exp(max - shift);
  max = m;
}

}  // namespace

void lse_absorb_log_ratio(float& max_x, float& sum_x, double& weighted, float& max_y, float& sum_y, const float* x,
                          const float* y, int64_t n) {
  if (n <= 0) return;
  float sx, sy, rx, ry, px, py;
  double pw;
  move_max(max_x, vec_max(x, n), sx, rx);
  move_max(max_y, vec_max(y, n), sy, ry);
  sum_exp_log_ratio(x, y, n, sx, sy, px, pw, py);
  sum_x = sum_x * rx + px;
  weighted = weighted * rx + pw;
  sum_y = sum_y * ry + py;
}

void lse_absorb_root(float& max_x, float& sum_x, float& max_y, float& sum_y, double& root, const float* x,
                     const float* y, int64_t n) {
  if (n <= 0) return;
  float sx, sy, rx, ry, px, py;
  double pr;
  move_max(max_x, vec_max(x, n), sx, rx);
  move_max(max_y, vec_max(y, n), sy, ry);
  sum_exp_root(x, y, n, sx, sy, px, py, pr);
  sum_x = sum_x * rx + px;
  sum_y = sum_y * ry + py;
  root = root * std::sqrt(static_cast<double>(rx) * static_cast<double>(ry)) + pr;
}

void lse_absorb_root(double& max_x, double& sum_x, double& max_y, double& sum_y, double& root, const double* x,
                     const double* y, int64_t n) {
  if (n <= 0) return;
  double cx = -std::numeric_limits<double>::infinity(), cy = cx;
  for (int64_t i = 0; i < n; ++i) {
    cx = x[i] > cx ? x[i] : cx;
    cy = y[i] > cy ? y[i] : cy;
  }
  double sx, sy, rx, ry, px = 0.0, py = 0.0, pr = 0.0;
  move_max(max_x, cx, sx, rx);
  move_max(max_y, cy, sy, ry);
  for (int64_t i = 0; i < n; ++i) {
    const double ex = std::exp(x[i] - sx), ey = std::exp(y[i] - sy), prod = ex * ey;
    px += ex;
    py += ey;
    pr += prod < std::numeric_limits<double>::min() ? 0.0 : std::sqrt(prod);
  }
  sum_x = sum_x * rx + px;
  sum_y = sum_y * ry + py;
  root = root * std::sqrt(rx * ry) + pr;
}

// float64: plain loops with exact std::exp (two passes: max, then the shifted sum).
double lse_absorb(double& max, double& sum, const double* x, int64_t n) {
  if (n <= 0) return -std::numeric_limits<double>::infinity();
  double cm = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) cm = x[i] > cm ? x[i] : cm;
  const double m = max > cm ? max : cm;
  const double shift = m == -std::numeric_limits<double>::infinity() ? 0.0 : m;
  double piece = 0.0;
  for (int64_t i = 0; i < n; ++i) piece += std::exp(x[i] - shift);
  const double rescale = max == -std::numeric_limits<double>::infinity() ? 0.0 : std::exp(max - shift);
  sum = sum * rescale + piece;
  max = m;
  return cm;
}

}  // namespace objx
