// The extension module rgpo_fast._C: op schemas (torch.library, namespace rgpo_fast), the
// CPU implementations with their input checks, and an empty Python module whose import
// runs the registrations. The fake (meta) implementations that let the ops trace under
// torch.compile live in Python, rgpo_fast/ops/cpp_backend.py.
//
// All schemas are defined here; the CUDA extension rgpo_fast._C_cuda only adds CUDA
// implementations (TORCH_LIBRARY_IMPL) and is loaded after this module.
//
// No pybind11 / torch/extension.h: the module is a bare CPython module, which keeps this
// translation unit cheap to compile.

#include <Python.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu/fused_ops.h"
#include "op_checks.h"

namespace rgpo_fast {
namespace {

constexpr auto kCPU = c10::DeviceType::CPU;

void check_targets_range(const Tensor& targets, int64_t vocab) {
  // O(N) scan: an out-of-range target would read outside a logits row.
  const int64_t* t = targets.data_ptr<int64_t>();
  const int64_t n = targets.numel();
  if (n == 0) return;
  const auto [lo, hi] = std::minmax_element(t, t + n);
  TORCH_CHECK(*lo >= 0 && *hi < vocab, "rgpo_fast: targets must be in [0, ", vocab,
              "), got values in [", *lo, ", ", *hi, "]");
}

std::tuple<Tensor, Tensor, Tensor> logprob_forward_cpu(const Tensor& hidden,
                                                       const Tensor& weight,
                                                       const OptTensor& bias,
                                                       const Tensor& targets,
                                                       double temperature, bool with_entropy,
                                                       int64_t chunk_size,
                                                       const OptTensor& threshold) {
  check_linear_op(hidden, weight, bias, targets, temperature, kCPU);
  check_token("threshold", threshold, hidden.size(0), at::kFloat, kCPU);
  const Tensor tg = targets.contiguous();
  check_targets_range(tg, weight.size(0));
  return cpu::logprob_forward(hidden.contiguous(), weight.contiguous(), contiguous(bias), tg,
                              temperature, with_entropy, chunk_size, contiguous(threshold));
}

std::tuple<Tensor, Tensor, Tensor> logprob_backward_cpu(
    const Tensor& hidden, const Tensor& weight, const OptTensor& bias, const Tensor& targets,
    const Tensor& lse, const OptTensor& entropy, double temperature, const Tensor& g_logp,
    const OptTensor& g_ent, bool need_hidden, bool need_weight, bool need_bias,
    int64_t chunk_size, const OptTensor& threshold) {
  check_linear_op(hidden, weight, bias, targets, temperature, kCPU);
  const int64_t n = hidden.size(0);
  check_backward_tokens(n, lse, entropy, g_logp, g_ent, kCPU);
  check_token("threshold", threshold, n, at::kFloat, kCPU);
  const Tensor tg = targets.contiguous();
  check_targets_range(tg, weight.size(0));
  return cpu::logprob_backward(hidden.contiguous(), weight.contiguous(), contiguous(bias), tg,
                               lse.contiguous(), contiguous(entropy), temperature,
                               g_logp.contiguous(), contiguous(g_ent), need_hidden,
                               need_weight, need_bias, chunk_size, contiguous(threshold));
}

std::tuple<Tensor, Tensor, Tensor> token_loss_cpu(
    const Tensor& logp, const Tensor& advantages, const Tensor& pg_weight,
    const Tensor& sft_weight, const Tensor& policy, const OptTensor& offpolicy,
    const OptTensor& old_logprobs, const OptTensor& ref_logprobs,
    const OptTensor& rollout_logprobs, const OptTensor& entropy, double clip_low,
    double clip_high, std::optional<double> clip_ratio_c, double beta, int64_t kl_estimator,
    double luffy_gamma, double tis_cap) {
  const int64_t n = check_logp_tokens(logp, entropy, kCPU);
  auto terms = make_token_tensors(n, advantages, pg_weight, sft_weight, policy, offpolicy,
                                  old_logprobs, ref_logprobs, rollout_logprobs, kCPU);
  auto p = make_loss_params(clip_low, clip_high, clip_ratio_c, beta, kl_estimator, luffy_gamma,
                            tis_cap, old_logprobs.has_value(), ref_logprobs.has_value(),
                            rollout_logprobs.has_value(), entropy.has_value());
  return cpu::token_loss(logp.contiguous(), terms, contiguous(entropy), p);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> policy_loss_forward_backward_cpu(
    const Tensor& hidden, const Tensor& weight, const OptTensor& bias, const Tensor& targets,
    const Tensor& advantages, const Tensor& pg_weight, const Tensor& sft_weight,
    const Tensor& policy, const OptTensor& offpolicy, const OptTensor& old_logprobs,
    const OptTensor& ref_logprobs, const OptTensor& rollout_logprobs, double clip_low,
    double clip_high, std::optional<double> clip_ratio_c, double beta, int64_t kl_estimator,
    double luffy_gamma, double tis_cap, double temperature, bool with_entropy,
    bool need_hidden, bool need_weight, bool need_bias, int64_t chunk_size) {
  check_linear_op(hidden, weight, bias, targets, temperature, kCPU);
  const int64_t n = hidden.size(0);
  auto terms = make_token_tensors(n, advantages, pg_weight, sft_weight, policy, offpolicy,
                                  old_logprobs, ref_logprobs, rollout_logprobs, kCPU);
  auto p = make_loss_params(clip_low, clip_high, clip_ratio_c, beta, kl_estimator, luffy_gamma,
                            tis_cap, old_logprobs.has_value(), ref_logprobs.has_value(),
                            rollout_logprobs.has_value(), with_entropy);
  const Tensor tg = targets.contiguous();
  check_targets_range(tg, weight.size(0));
  return cpu::policy_loss_forward_backward(hidden.contiguous(), weight.contiguous(),
                                           contiguous(bias), tg, terms, p, temperature,
                                           with_entropy, need_hidden, need_weight, need_bias,
                                           chunk_size);
}

Tensor pack_bf16_cpu(at::TensorList tensors, at::IntArrayRef offsets, int64_t total) {
  TORCH_CHECK(tensors.size() == offsets.size(), "rgpo_fast: pack_bf16 got ", tensors.size(),
              " tensors but ", offsets.size(), " offsets");
  for (size_t i = 0; i < tensors.size(); ++i) {
    check_device("pack_bf16 input", tensors[i], kCPU);
    TORCH_CHECK(at::isFloatingType(tensors[i].scalar_type()),
                "rgpo_fast: pack_bf16 inputs must be floating point, got ",
                tensors[i].scalar_type());
    TORCH_CHECK(offsets[i] >= 0 && offsets[i] + tensors[i].numel() <= total,
                "rgpo_fast: pack_bf16 tensor ", i, " (", tensors[i].numel(),
                " elements at offset ", offsets[i], ") does not fit in ", total);
  }
  return cpu::pack_bf16(tensors, offsets, total);
}

}  // namespace
}  // namespace rgpo_fast

TORCH_LIBRARY(rgpo_fast, m) {
  // The fake (meta) kernels are registered by this Python module; naming it lets
  // torch.compile import it when it meets one of these ops first.
  m.set_python_module("rgpo_fast.ops.cpp_backend");
  m.def(
      "logprob_forward(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, "
      "float temperature, bool with_entropy, int chunk_size, Tensor? threshold=None) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "logprob_backward(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, "
      "Tensor lse, Tensor? entropy, float temperature, Tensor g_logp, Tensor? g_ent, "
      "bool need_hidden, bool need_weight, bool need_bias, int chunk_size, "
      "Tensor? threshold=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "token_loss(Tensor logp, Tensor advantages, Tensor pg_weight, Tensor sft_weight, "
      "Tensor policy, Tensor? offpolicy, Tensor? old_logprobs, Tensor? ref_logprobs, "
      "Tensor? rollout_logprobs, Tensor? entropy, float clip_low, float clip_high, "
      "float? clip_ratio_c, float beta, int kl_estimator, float luffy_gamma, float tis_cap) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "policy_loss_forward_backward(Tensor hidden, Tensor weight, Tensor? bias, "
      "Tensor targets, Tensor advantages, Tensor pg_weight, Tensor sft_weight, Tensor policy, "
      "Tensor? offpolicy, Tensor? old_logprobs, Tensor? ref_logprobs, "
      "Tensor? rollout_logprobs, float clip_low, float clip_high, float? clip_ratio_c, "
      "float beta, int kl_estimator, float luffy_gamma, float tis_cap, float temperature, "
      "bool with_entropy, bool need_hidden, bool need_weight, bool need_bias, int chunk_size) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("pack_bf16(Tensor[] tensors, int[] offsets, int total) -> Tensor");
}

TORCH_LIBRARY_IMPL(rgpo_fast, CPU, m) {
  m.impl("logprob_forward", &rgpo_fast::logprob_forward_cpu);
  m.impl("logprob_backward", &rgpo_fast::logprob_backward_cpu);
  m.impl("token_loss", &rgpo_fast::token_loss_cpu);
  m.impl("policy_loss_forward_backward", &rgpo_fast::policy_loss_forward_backward_cpu);
  m.impl("pack_bf16", &rgpo_fast::pack_bf16_cpu);
}

// `import rgpo_fast._C` loads this shared library, which runs the static registrations
// above; the module itself has no attributes.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
