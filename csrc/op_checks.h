// Input checks and argument packing shared by the CPU binding (csrc/bindings.cpp) and the
// CUDA binding (csrc/cuda/bindings_cuda.cpp). Every op entry point validates its inputs here
// with TORCH_CHECK (a clear Python RuntimeError), so the kernels can assume contiguous
// tensors of the documented shapes and dtypes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "common/token_loss.h"
#include "cpu/fused_ops.h"

namespace rgpo_fast {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

inline void check_device(const char* name, const Tensor& t, c10::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, "rgpo_fast: ", name, " must be on ",
              c10::DeviceTypeName(device), ", got ", t.device());
}

// hidden (N, H), weight (V, H), bias (V,) of weight's dtype, targets (N,) int64.
inline void check_linear(const Tensor& hidden, const Tensor& weight, const OptTensor& bias,
                         const Tensor& targets, c10::DeviceType device) {
  TORCH_CHECK(hidden.dim() == 2, "rgpo_fast: hidden must be 2-D (N, H), got ", hidden.sizes());
  TORCH_CHECK(weight.dim() == 2, "rgpo_fast: weight must be 2-D (V, H), got ", weight.sizes());
  TORCH_CHECK(hidden.size(1) == weight.size(1), "rgpo_fast: hidden (N, H) and weight (V, H) ",
              "disagree on H: ", hidden.sizes(), " vs ", weight.sizes());
  const auto dt = hidden.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "rgpo_fast: hidden must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(weight.scalar_type() == dt, "rgpo_fast: weight dtype ", weight.scalar_type(),
              " differs from hidden dtype ", dt);
  TORCH_CHECK(weight.size(0) > 0, "rgpo_fast: weight has an empty vocabulary");
  check_device("hidden", hidden, device);
  check_device("weight", weight, device);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0),
                "rgpo_fast: bias must have shape (", weight.size(0), ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == dt, "rgpo_fast: bias dtype ", bias->scalar_type(),
                " differs from weight dtype ", dt);
    check_device("bias", *bias, device);
  }
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0),
              "rgpo_fast: targets must have shape (", hidden.size(0), ",), got ", targets.sizes());
  TORCH_CHECK(targets.scalar_type() == at::kLong, "rgpo_fast: targets must be int64, got ",
              targets.scalar_type());
  check_device("targets", targets, device);
}

// A per-token (N,) tensor of the given dtype on the op's device.
inline void check_token(const char* name, const Tensor& t, int64_t n, at::ScalarType dtype,
                        c10::DeviceType device) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "rgpo_fast: ", name, " must have shape (", n,
              ",), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "rgpo_fast: ", name, " must be ", dtype, ", got ",
              t.scalar_type());
  check_device(name, t, device);
}

inline void check_token(const char* name, const OptTensor& t, int64_t n, at::ScalarType dtype,
                        c10::DeviceType device) {
  if (t.has_value()) check_token(name, *t, n, dtype, device);
}

// The checks of every op over hidden states and the lm_head (log-prob forward and backward,
// the fused policy loss), the same for each device's implementation.
inline void check_linear_op(const Tensor& hidden, const Tensor& weight, const OptTensor& bias,
                            const Tensor& targets, double temperature, c10::DeviceType device) {
  check_linear(hidden, weight, bias, targets, device);
  TORCH_CHECK(temperature > 0.0, "rgpo_fast: temperature must be > 0, got ", temperature);
}

// The log-prob backward's per-token inputs: fp32 (N,); g_ent only with the entropy.
inline void check_backward_tokens(int64_t n, const Tensor& lse, const OptTensor& entropy,
                                  const Tensor& g_logp, const OptTensor& g_ent,
                                  c10::DeviceType device) {
  check_token("lse", lse, n, at::kFloat, device);
  check_token("g_logp", g_logp, n, at::kFloat, device);
  check_token("g_ent", g_ent, n, at::kFloat, device);
  check_token("entropy", entropy, n, at::kFloat, device);
  TORCH_CHECK(!g_ent.has_value() || entropy.has_value(),
              "rgpo_fast: g_ent needs the forward's entropy");
}

// The token loss's log-probs (and optional entropies): fp32 (N,); returns N.
inline int64_t check_logp_tokens(const Tensor& logp, const OptTensor& entropy,
                                 c10::DeviceType device) {
  TORCH_CHECK(logp.dim() == 1, "rgpo_fast: logp must be 1-D, got ", logp.sizes());
  const int64_t n = logp.size(0);
  check_token("logp", logp, n, at::kFloat, device);
  check_token("entropy", entropy, n, at::kFloat, device);
  return n;
}

inline OptTensor contiguous(const OptTensor& t) {
  return t.has_value() ? OptTensor(t->contiguous()) : std::nullopt;
}

inline cpu::TokenTensors make_token_tensors(int64_t n, const Tensor& advantages,
                                            const Tensor& pg_weight, const Tensor& sft_weight,
                                            const Tensor& policy, const OptTensor& offpolicy,
                                            const OptTensor& old_logprobs,
                                            const OptTensor& ref_logprobs,
                                            const OptTensor& rollout_logprobs,
                                            c10::DeviceType device) {
  check_token("advantages", advantages, n, at::kFloat, device);
  check_token("pg_weight", pg_weight, n, at::kFloat, device);
  check_token("sft_weight", sft_weight, n, at::kFloat, device);
  check_token("policy", policy, n, at::kBool, device);
  check_token("offpolicy", offpolicy, n, at::kBool, device);
  check_token("old_logprobs", old_logprobs, n, at::kFloat, device);
  check_token("ref_logprobs", ref_logprobs, n, at::kFloat, device);
  check_token("rollout_logprobs", rollout_logprobs, n, at::kFloat, device);
  return cpu::TokenTensors{advantages.contiguous(), pg_weight.contiguous(),
                           sft_weight.contiguous(), policy.contiguous(),
                           contiguous(offpolicy),   contiguous(old_logprobs),
                           contiguous(ref_logprobs), contiguous(rollout_logprobs)};
}

// LossConfig scalars -> LossParams. The clip thresholds are formed in double and rounded
// once to fp32, as PyTorch does when comparing an fp32 tensor with a Python float.
inline LossParams make_loss_params(double clip_low, double clip_high,
                                   std::optional<double> clip_ratio_c, double beta,
                                   int64_t kl_estimator, double luffy_gamma, double tis_cap,
                                   bool has_old, bool has_ref, bool has_rollout,
                                   bool has_entropy) {
  TORCH_CHECK(kl_estimator >= kKlK1 && kl_estimator <= kKlK3,
              "rgpo_fast: kl_estimator must be 1 (k1), 2 (k2) or 3 (k3), got ", kl_estimator);
  TORCH_CHECK(clip_low >= 0.0 && clip_low < 1.0, "rgpo_fast: clip_low must be in [0, 1), got ",
              clip_low);
  TORCH_CHECK(clip_high >= 0.0, "rgpo_fast: clip_high must be >= 0, got ", clip_high);
  TORCH_CHECK(!clip_ratio_c.has_value() || *clip_ratio_c > 1.0,
              "rgpo_fast: clip_ratio_c must be > 1 or None");
  LossParams p;
  p.ratio_lo = static_cast<float>(1.0 - clip_low);
  p.ratio_hi = static_cast<float>(1.0 + clip_high);
  p.has_dual = clip_ratio_c.has_value();
  p.clip_c = static_cast<float>(clip_ratio_c.value_or(0.0));
  p.beta = static_cast<float>(beta);
  p.kl_estimator = static_cast<int>(kl_estimator);
  p.luffy_gamma = static_cast<float>(luffy_gamma);
  p.tis_cap = static_cast<float>(tis_cap);
  p.has_old = has_old;
  p.has_ref = has_ref;
  p.has_rollout = has_rollout;
  p.has_entropy = has_entropy;
  return p;
}

}  // namespace rgpo_fast
