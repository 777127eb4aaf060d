// Per-token policy loss with its closed-form derivative, shared by the C++ (CPU) and CUDA
// kernels. It is a line-by-line port of rgpo_fast/algos/policy_loss.py::token_loss_and_grad
// (the Python function is the specification; tests compare the two token by token).
//
// Every term is a function of one token's log-prob l only, given detached per-token inputs,
// so a kernel can compute d(loss)/dl right after l and fold it into the softmax gradient of
// the same logits block (no second sweep over the vocabulary).
//
// Numerics follow the PyTorch code: all arithmetic in fp32, the clip thresholds 1 - eps_low
// and 1 + eps_high are formed in double on the host and rounded to fp32 once (PyTorch does
// the same when it compares an fp32 tensor with a Python float).
//
// This header needs no torch and no CUDA headers: it compiles as host code in the C++
// extension and as __host__ __device__ code under nvcc.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define RGPO_HD __host__ __device__ __forceinline__
#else
#define RGPO_HD inline
#endif

namespace rgpo_fast {

// Order of the statistics vector; must match STAT_NAMES in algos/policy_loss.py.
enum Stat : int {
  kStatPgLoss = 0,
  kStatKlLoss,
  kStatSftLoss,
  kStatNPolicy,
  kStatNClipLow,
  kStatNClipHigh,
  kStatNDualClip,
  kStatRatioSum,
  kStatKlSum,
  kStatNSft,
  kStatEntropySum,
  kStatNActive,
  kNumStats
};

// KL_CODES of algos/policy_loss.py (0 there means "no KL term", which LossParams says with
// beta / has_ref instead). The constants below are LOG_RATIO_CLAMP and K3_CLAMP there;
// tests/test_loss_constants.py checks that both files agree.
enum KlEstimator : int { kKlK1 = 1, kKlK2 = 2, kKlK3 = 3 };

constexpr float kLogRatioClamp = 20.0f;  // exp(+-20) keeps the ratio finite in fp32
constexpr float kK3Clamp = 10.0f;

// Non-tensor options of the loss (LossConfig), already reduced to what the kernel needs.
struct LossParams {
  float ratio_lo;      // 1 - clip_low
  float ratio_hi;      // 1 + clip_high
  float clip_c;        // dual-clip constant c (used only when has_dual)
  float beta;          // KL coefficient; the KL term runs only when beta > 0 and has_ref
  float luffy_gamma;   // LUFFY shaping constant gamma
  float tis_cap;       // truncated-importance-sampling cap C
  int kl_estimator;    // KlEstimator
  bool has_dual;
  bool has_old;
  bool has_ref;
  bool has_rollout;
  bool has_entropy;
};

// Detached inputs of one token. Absent optional inputs are ignored via LossParams flags.
struct TokenIn {
  float logp;
  float adv;
  float pg_weight;   // aggregation weight (0 off policy tokens)
  float sft_weight;  // sft_coef / #SFT tokens on SFT tokens, else 0
  bool policy;
  bool offpolicy;    // LUFFY shaped-ratio token
  float old_logp;
  float ref_logp;
  float rollout_logp;
  float entropy;
};

struct TokenOut {
  float loss;             // w*pg + w*beta*kl - sft*l
  float grad;             // d loss / d l
  float stats[kNumStats]; // this token's contribution to each summed statistic
};

RGPO_HD float clampf(float x, float lo, float hi) { return fminf(fmaxf(x, lo), hi); }

RGPO_HD void token_loss_and_grad(const LossParams& p, const TokenIn& t, TokenOut& o) {
  const float l = t.logp;
  const float adv = t.adv;
  const bool ratio_tok = t.policy && !t.offpolicy;
  const bool off_tok = t.policy && t.offpolicy;

  // PPO clipped surrogate. Without old log-probs rho = exp(l - stopgrad(l)) = 1, drho/dl = 1.
  float log_ratio = 0.0f;
  bool in_range = true;
  if (p.has_old) {
    const float raw = l - t.old_logp;
    log_ratio = clampf(raw, -kLogRatioClamp, kLogRatioClamp);
    in_range = fabsf(raw) < kLogRatioClamp;  // outside, the clamp kills the gradient
  }
  float ratio = expf(log_ratio);
  float pg = fmaxf(-adv * ratio, -adv * clampf(ratio, p.ratio_lo, p.ratio_hi));
  const bool c_low = adv < 0.0f && ratio < p.ratio_lo;
  const bool c_high = adv > 0.0f && ratio > p.ratio_hi;
  float grad = (c_low || c_high || !in_range) ? 0.0f : -adv * ratio;
  bool dual = false;
  if (p.has_dual) {
    dual = adv < 0.0f && ratio > p.clip_c;
    if (dual) {
      pg = -adv * p.clip_c;
      grad = 0.0f;
    }
  }
  if (off_tok) {
    // LUFFY: f = pi / (pi + gamma), df/dl = pi * gamma / (pi + gamma)^2, no clipping.
    const float pi = expf(l);
    const float den = pi + p.luffy_gamma;
    const float f = pi / den;
    pg = -adv * f;
    grad = -adv * pi * p.luffy_gamma / (den * den);
    ratio = f;
  }

  float w = t.pg_weight;
  if (p.has_rollout) {
    // Truncated IS against the rollout engine's log-probs: detached min(exp(o - q), C).
    const float old = p.has_old ? t.old_logp : l;
    const float tis = expf(fminf(old - t.rollout_logp, kLogRatioClamp));
    w = w * (ratio_tok ? fminf(tis, p.tis_cap) : 1.0f);
  }
  if (!t.policy) w = 0.0f;

  const float loss_pg = w * pg;
  float grad_t = w * grad;
  float kl = 0.0f;
  float loss_kl = 0.0f;
  if (p.beta > 0.0f && p.has_ref) {
    const float d = t.ref_logp - l;
    float dkl;
    if (p.kl_estimator == kKlK1) {
      kl = l - t.ref_logp;
      dkl = 1.0f;
    } else if (p.kl_estimator == kKlK2) {
      kl = 0.5f * d * d;
      dkl = -d;
    } else {
      const float e = expf(d);
      const float k = e - d - 1.0f;
      const bool inside = k >= -kK3Clamp && k <= kK3Clamp;
      kl = clampf(k, -kK3Clamp, kK3Clamp);
      dkl = inside ? 1.0f - e : 0.0f;
    }
    if (!t.policy) kl = 0.0f;
    loss_kl = w * p.beta * kl;
    grad_t = grad_t + w * p.beta * dkl;
  }

  const float sft = t.sft_weight;
  const float loss_sft = -sft * l;
  grad_t = grad_t - sft;
  const bool sft_tok = sft > 0.0f;
  const bool active = t.policy || sft_tok;
  const float pf = t.policy ? 1.0f : 0.0f;

  o.loss = loss_pg + loss_kl + loss_sft;
  o.grad = grad_t;
  o.stats[kStatPgLoss] = loss_pg;
  o.stats[kStatKlLoss] = loss_kl;
  o.stats[kStatSftLoss] = loss_sft;
  o.stats[kStatNPolicy] = pf;
  o.stats[kStatNClipLow] = (c_low && ratio_tok) ? 1.0f : 0.0f;
  o.stats[kStatNClipHigh] = (c_high && ratio_tok) ? 1.0f : 0.0f;
  o.stats[kStatNDualClip] = (dual && ratio_tok) ? 1.0f : 0.0f;
  o.stats[kStatRatioSum] = ratio * pf;
  o.stats[kStatKlSum] = kl * pf;
  o.stats[kStatNSft] = sft_tok ? 1.0f : 0.0f;
  o.stats[kStatEntropySum] = (p.has_entropy && active) ? t.entropy : 0.0f;
  o.stats[kStatNActive] = active ? 1.0f : 0.0f;
}

}  // namespace rgpo_fast
