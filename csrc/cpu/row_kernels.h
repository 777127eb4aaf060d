// Row kernels of the CPU epilogue: the passes over one row of an fp32 logits block.
//
// A row holds one token's V logits (V = 151936 for Qwen2.5 is 594 KiB of fp32) and fits in
// a core's L2, so after the first pass pulls it in from the block that the GEMM wrote, the
// later passes run from cache. The loops are written for the compiler's auto-vectoriser
// (`#pragma omp simd`, enabled by -fopenmp-simd without linking an OpenMP runtime) and
// compiled three times with GCC function multi-versioning (AVX-512, AVX2+FMA, baseline
// x86-64), picked once at load time, so one wheel runs on any x86-64 CPU.
//
// Sums over the vocabulary are blocked: a vectorised fp32 sum over kSumBlock elements
// (about 128 terms per SIMD lane), then the partial sums added in double. The fp32 rounding
// error of a row sum then stays near that of a pairwise sum instead of growing with V.
//
// No torch headers: this file is plain C++ and can be compiled and checked on its own.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(RGPO_NO_CLONES)
#define RGPO_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RGPO_CPU_CLONES
#endif

namespace rgpo_fast {
namespace cpu {

constexpr int64_t kSumBlock = 2048;

// exp(x) for fp32 in a form the vectoriser accepts (no calls, no branches).
// Cephes expf: x = n*ln2 + r with |r| <= ln2/2 (ln2 split in a hi part exact in fp32 and a
// lo correction), exp(r) by the degree-6 minimax polynomial, 2^n assembled in the exponent
// bits. Relative error <= 2 ulp against std::exp on [-87, 88] (checked on a dense grid in
// tests/test_cpp_ops.py through the row kernels). Inputs below -87 are clamped to -87:
// exp(-87) = 1.6e-38 instead of a smaller number or 0, which changes a sum of V such terms
// next to the row maximum's exp(0) = 1 by less than V * 1.6e-38 (below fp32 resolution).
// Inputs above 88 are clamped to 88 (the kernels only pass arguments <= ~0).
inline float fast_expf(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // Round x / ln2 to the nearest integer with the 1.5 * 2^23 trick (exact for |t| < 2^22).
  const float t = x * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

// max_k x[k]
RGPO_CPU_CLONES inline float row_max(const float* x, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t k = 0; k < n; ++k) m = x[k] > m ? x[k] : m;
  return m;
}

// With y_k = (x_k - m) * inv_t and e_k = exp(y_k): sum_e = sum_k e_k and, when sum_ey is
// non-null, sum_ey = sum_k e_k * y_k (the entropy term: H = log S - sum_ey / S).
// When `e_out` is non-null, e_k is stored there (may alias x: in place).
RGPO_CPU_CLONES inline void row_exp_sums(const float* x, float* e_out, int64_t n, float m,
                                         float inv_t, double* sum_e, double* sum_ey) {
  double se = 0.0, sey = 0.0;
  for (int64_t b0 = 0; b0 < n; b0 += kSumBlock) {
    const int64_t b1 = b0 + kSumBlock < n ? b0 + kSumBlock : n;
    float s = 0.0f, sy = 0.0f;
    if (e_out != nullptr && sum_ey != nullptr) {
#pragma omp simd reduction(+ : s, sy)
      for (int64_t k = b0; k < b1; ++k) {
        const float y = (x[k] - m) * inv_t;
        const float e = fast_expf(y);
        e_out[k] = e;
        s += e;
        sy += e * y;
      }
    } else if (e_out != nullptr) {
#pragma omp simd reduction(+ : s)
      for (int64_t k = b0; k < b1; ++k) {
        const float e = fast_expf((x[k] - m) * inv_t);
        e_out[k] = e;
        s += e;
      }
    } else if (sum_ey != nullptr) {
#pragma omp simd reduction(+ : s, sy)
      for (int64_t k = b0; k < b1; ++k) {
        const float y = (x[k] - m) * inv_t;
        const float e = fast_expf(y);
        s += e;
        sy += e * y;
      }
    } else {
#pragma omp simd reduction(+ : s)
      for (int64_t k = b0; k < b1; ++k) s += fast_expf((x[k] - m) * inv_t);
    }
    se += s;
    sey += sy;
  }
  *sum_e = se;
  if (sum_ey != nullptr) *sum_ey = sey;
}

// In place: e_k <- a * e_k (turns stored exponentials into a scaled softmax gradient).
RGPO_CPU_CLONES inline void row_scale(float* e, int64_t n, float a) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) e[k] *= a;
}

// In place: logits x_k (unscaled by temperature) -> d loss / d x_k of the log-prob backward,
//   logp_k = x_k * inv_t - lse,  p_k = exp(logp_k),
//   dz_k = -p_k * (g_l + g_h * (logp_k + H)) * inv_t   (the target's +g_l * inv_t is added
// by the caller). With g_h = 0 the entropy term vanishes.
RGPO_CPU_CLONES inline void row_logprob_grad(float* x, int64_t n, float inv_t, float lse,
                                             float g_l, float g_h, float ent) {
  if (g_h == 0.0f) {
    const float a = -g_l * inv_t;
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) x[k] = a * fast_expf(x[k] * inv_t - lse);
  } else {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const float lp = x[k] * inv_t - lse;
      x[k] = -fast_expf(lp) * (g_l + g_h * (lp + ent)) * inv_t;
    }
  }
}

// In place: the logits a truncated sampler drops (x_k * inv_t < thr, rgpo_fast/ops/
// truncation.py) become `fill`, all but x_keep (the target, always kept). The caller picks
// fill so that (fill - m) * inv_t is about -1e4: fast_expf floors it at exp(-87) = 1.6e-38,
// which adds at most V * 1.6e-38 to a row sum whose largest term is 1, and at most
// V * 1.6e-34 to the entropy's sum of e_k y_k (below fp32 resolution either way).
RGPO_CPU_CLONES inline void row_drop_below(float* x, int64_t n, float inv_t, float thr,
                                           int64_t keep, float fill) {
  const float kept = x[keep];
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) x[k] = x[k] * inv_t < thr ? fill : x[k];
  x[keep] = kept;
}

// row_logprob_grad for a truncated sampler: a logit with x_k * inv_t < thr (dropped) gets
// exactly 0, not fast_expf's floor times the upstream gradient, which would be a denormal
// float: the gradient GEMMs that read the row run about 100x slower on denormals. The
// target, kept whatever its logit, is recomputed by the caller.
RGPO_CPU_CLONES inline void row_logprob_grad_cut(float* x, int64_t n, float inv_t, float lse,
                                                 float g_l, float g_h, float ent, float thr) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const float z = x[k] * inv_t;
    const float lp = z - lse;
    const float d = -fast_expf(lp) * (g_l + g_h * (lp + ent)) * inv_t;
    x[k] = z < thr ? 0.0f : d;
  }
}

// acc_k += x_k (column sums for the bias gradient).
RGPO_CPU_CLONES inline void row_accumulate(float* acc, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) acc[k] += x[k];
}

}  // namespace cpu
}  // namespace rgpo_fast
