// The extension module rgpo_fast._C_cuda: CUDA implementations of the ops whose schemas
// rgpo_fast._C defines (csrc/bindings.cpp; load that module first).
//
// Per chunk of tokens: the logits block comes from cuBLAS (at::mm in the input dtype, no
// bias: the kernels add the fp32 bias on load), the row epilogue is one kernel
// (csrc/cuda/fused_epilogue.cu), and the gradient GEMMs are cuBLAS again. Per-row loss and
// statistics are reduced with ATen sums in double (deterministic, unlike atomics).
//
// This file includes torch's CUDA headers and so is compiled only by the CUDA extension
// build (a CUDA build of torch); the .cu files it calls need only the CUDA runtime.

#include <Python.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cuda/kernels.h"
#include "op_checks.h"

namespace rgpo_fast {
namespace {

constexpr auto kCUDA = c10::DeviceType::CUDA;

#define RGPO_CUDA_CHECK(expr)                                                        \
  do {                                                                               \
    const cudaError_t err_ = (expr);                                                 \
    TORCH_CHECK(err_ == cudaSuccess, "rgpo_fast CUDA error: ", cudaGetErrorString(err_)); \
  } while (0)

cuda::DType dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return cuda::DType::kFloat32;
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    case at::kHalf:
      return cuda::DType::kFloat16;
    default:
      TORCH_CHECK(false, "rgpo_fast: unsupported dtype ", t.scalar_type());
  }
}

int64_t chunk_rows(int64_t chunk_size, int64_t n, int64_t v) {
  const int64_t c = chunk_size > 0 ? chunk_size : cpu::auto_chunk_size(n, v);
  return std::max<int64_t>(1, std::min(c, n));
}

Tensor bias_f32(const OptTensor& bias) {
  return bias.has_value() ? bias->to(at::kFloat).contiguous() : Tensor();
}

const float* ptr_or_null(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
float* mutable_ptr_or_null(Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
template <typename T>
const T* ptr_or_null(const OptTensor& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

struct Grads {
  Tensor dh, dw, db;  // db fp32 (atomics), dw fp32 for half weights
};

Grads make_grads(const Tensor& hidden, const Tensor& weight, bool need_h, bool need_w,
                 bool need_b) {
  Grads g;
  if (need_h) g.dh = at::empty_like(hidden);
  if (need_w) {
    const bool half = weight.scalar_type() != at::kFloat;
    g.dw = at::zeros(weight.sizes(), weight.options().dtype(half ? at::kFloat : weight.scalar_type()));
  }
  if (need_b) g.db = at::zeros({weight.size(0)}, weight.options().dtype(at::kFloat));
  return g;
}

void gradient_gemms(const Tensor& dz, const Tensor& h, const Tensor& weight, Grads& g,
                    int64_t s) {
  if (g.dh.defined()) {
    Tensor dh_c = g.dh.narrow(0, s, dz.size(0));
    at::mm_out(dh_c, dz, weight);
  }
  if (g.dw.defined()) {
    if (g.dw.scalar_type() == dz.scalar_type()) {
      g.dw.addmm_(dz.t(), h);
    } else {
      g.dw.add_(at::mm(dz.t(), h));
    }
  }
}

std::tuple<Tensor, Tensor, Tensor> finish(Grads& g, const Tensor& hidden, const Tensor& weight,
                                          const OptTensor& bias) {
  Tensor dh = g.dh.defined() ? g.dh : at::empty({0}, hidden.options());
  Tensor dw = g.dw.defined() ? g.dw.to(weight.scalar_type()) : at::empty({0}, weight.options());
  Tensor db = g.db.defined() ? g.db.to(bias->scalar_type())
                             : at::empty({0}, (bias.has_value() ? *bias : weight).options());
  return {dh, dw, db};
}

cuda::TokenPtrs token_ptrs(const cpu::TokenTensors& t, int64_t s) {
  auto off = [s](const float* p) { return p != nullptr ? p + s : nullptr; };
  cuda::TokenPtrs p;
  p.adv = t.advantages.data_ptr<float>() + s;
  p.pg_weight = t.pg_weight.data_ptr<float>() + s;
  p.sft_weight = t.sft_weight.data_ptr<float>() + s;
  p.policy = t.policy.data_ptr<bool>() + s;
  p.offpolicy = t.offpolicy.has_value() ? t.offpolicy->data_ptr<bool>() + s : nullptr;
  p.old_logp = off(ptr_or_null<float>(t.old_logprobs));
  p.ref_logp = off(ptr_or_null<float>(t.ref_logprobs));
  p.rollout_logp = off(ptr_or_null<float>(t.rollout_logprobs));
  return p;
}

// The CUDA epilogue has no truncated-sampler path (rgpo_fast/ops/truncation.py): the Python
// backend never passes a threshold here; a direct caller is told what has one.
constexpr const char* kNoThreshold =
    "rgpo_fast: the CUDA log-prob ops take no threshold (a top-k / top-p sampler's "
    "log-probs); use impl='triton' on the GPU";

std::tuple<Tensor, Tensor, Tensor> logprob_forward_cuda(const Tensor& hidden_in,
                                                        const Tensor& weight_in,
                                                        const OptTensor& bias,
                                                        const Tensor& targets_in,
                                                        double temperature, bool with_entropy,
                                                        int64_t chunk_size,
                                                        const OptTensor& threshold) {
  check_linear_op(hidden_in, weight_in, bias, targets_in, temperature, kCUDA);
  TORCH_CHECK(!threshold.has_value(), kNoThreshold);
  const c10::cuda::CUDAGuard guard(hidden_in.device());
  const Tensor hidden = hidden_in.contiguous(), weight = weight_in.contiguous();
  const Tensor targets = targets_in.contiguous(), b = bias_f32(bias);
  const int64_t n = hidden.size(0), v = weight.size(0);
  auto f32 = hidden.options().dtype(at::kFloat);
  Tensor logp = at::empty({n}, f32), lse = at::empty({n}, f32);
  Tensor ent = at::empty({with_entropy ? n : 0}, f32);
  if (n == 0) return {logp, lse, ent};
  const int64_t c = chunk_rows(chunk_size, n, v);
  Tensor block = at::empty({c, v}, hidden.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t s = 0; s < n; s += c) {
    const int64_t rows = std::min(c, n - s);
    Tensor z = block.narrow(0, 0, rows);
    at::mm_out(z, hidden.narrow(0, s, rows), weight.t());
    RGPO_CUDA_CHECK(cuda::launch_logprob_forward(
        z.data_ptr(), dtype_of(z), ptr_or_null(b), targets.data_ptr<int64_t>() + s, rows, v,
        static_cast<float>(1.0 / temperature), logp.data_ptr<float>() + s,
        lse.data_ptr<float>() + s, with_entropy ? ent.data_ptr<float>() + s : nullptr, stream));
  }
  return {logp, lse, ent};
}

std::tuple<Tensor, Tensor, Tensor> logprob_backward_cuda(
    const Tensor& hidden_in, const Tensor& weight_in, const OptTensor& bias,
    const Tensor& targets_in, const Tensor& lse_in, const OptTensor& entropy,
    double temperature, const Tensor& g_logp_in, const OptTensor& g_ent, bool need_hidden,
    bool need_weight, bool need_bias, int64_t chunk_size, const OptTensor& threshold) {
  check_linear_op(hidden_in, weight_in, bias, targets_in, temperature, kCUDA);
  TORCH_CHECK(!threshold.has_value(), kNoThreshold);
  const int64_t n = hidden_in.size(0);
  check_backward_tokens(n, lse_in, entropy, g_logp_in, g_ent, kCUDA);
  const c10::cuda::CUDAGuard guard(hidden_in.device());
  const Tensor hidden = hidden_in.contiguous(), weight = weight_in.contiguous();
  const Tensor targets = targets_in.contiguous(), b = bias_f32(bias);
  const Tensor lse = lse_in.contiguous(), g_logp = g_logp_in.contiguous();
  const OptTensor ge = contiguous(g_ent), en = contiguous(entropy);
  need_bias = need_bias && bias.has_value();
  Grads g = make_grads(hidden, weight, need_hidden, need_weight, need_bias);
  const int64_t v = weight.size(0);
  if (n > 0 && (need_hidden || need_weight || need_bias)) {
    const int64_t c = chunk_rows(chunk_size, n, v);
    Tensor block = at::empty({c, v}, hidden.options());
    auto stream = c10::cuda::getCurrentCUDAStream();
    for (int64_t s = 0; s < n; s += c) {
      const int64_t rows = std::min(c, n - s);
      Tensor z = block.narrow(0, 0, rows);
      Tensor h = hidden.narrow(0, s, rows);
      at::mm_out(z, h, weight.t());
      const float* gep = ptr_or_null<float>(ge);
      RGPO_CUDA_CHECK(cuda::launch_logprob_backward(
          z.data_ptr(), dtype_of(z), ptr_or_null(b), targets.data_ptr<int64_t>() + s, rows, v,
          static_cast<float>(1.0 / temperature), lse.data_ptr<float>() + s,
          g_logp.data_ptr<float>() + s, gep != nullptr ? gep + s : nullptr,
          gep != nullptr ? ptr_or_null<float>(en) + s : nullptr, mutable_ptr_or_null(g.db), stream));
      gradient_gemms(z, h, weight, g, s);
    }
  }
  return finish(g, hidden, weight, bias);
}

std::tuple<Tensor, Tensor, Tensor> token_loss_cuda(
    const Tensor& logp_in, const Tensor& advantages, const Tensor& pg_weight,
    const Tensor& sft_weight, const Tensor& policy, const OptTensor& offpolicy,
    const OptTensor& old_logprobs, const OptTensor& ref_logprobs,
    const OptTensor& rollout_logprobs, const OptTensor& entropy, double clip_low,
    double clip_high, std::optional<double> clip_ratio_c, double beta, int64_t kl_estimator,
    double luffy_gamma, double tis_cap) {
  const int64_t n = check_logp_tokens(logp_in, entropy, kCUDA);
  const c10::cuda::CUDAGuard guard(logp_in.device());
  auto terms = make_token_tensors(n, advantages, pg_weight, sft_weight, policy, offpolicy,
                                  old_logprobs, ref_logprobs, rollout_logprobs, kCUDA);
  auto p = make_loss_params(clip_low, clip_high, clip_ratio_c, beta, kl_estimator, luffy_gamma,
                            tis_cap, old_logprobs.has_value(), ref_logprobs.has_value(),
                            rollout_logprobs.has_value(), entropy.has_value());
  const Tensor logp = logp_in.contiguous();
  const OptTensor en = contiguous(entropy);
  auto f32 = logp.options();
  Tensor loss = at::empty({n}, f32), grad = at::empty({n}, f32);
  Tensor row_stats = at::empty({n, kNumStats}, f32);
  RGPO_CUDA_CHECK(cuda::launch_token_loss(
      logp.data_ptr<float>(), ptr_or_null<float>(en), n, token_ptrs(terms, 0), p,
      loss.data_ptr<float>(), grad.data_ptr<float>(), row_stats.data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream()));
  Tensor stats = row_stats.sum(0, /*keepdim=*/false, at::kDouble).to(at::kFloat);
  return {loss, grad, stats};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> policy_loss_forward_backward_cuda(
    const Tensor& hidden_in, const Tensor& weight_in, const OptTensor& bias,
    const Tensor& targets_in, const Tensor& advantages, const Tensor& pg_weight,
    const Tensor& sft_weight, const Tensor& policy, const OptTensor& offpolicy,
    const OptTensor& old_logprobs, const OptTensor& ref_logprobs,
    const OptTensor& rollout_logprobs, double clip_low, double clip_high,
    std::optional<double> clip_ratio_c, double beta, int64_t kl_estimator, double luffy_gamma,
    double tis_cap, double temperature, bool with_entropy, bool need_hidden, bool need_weight,
    bool need_bias, int64_t chunk_size) {
  check_linear_op(hidden_in, weight_in, bias, targets_in, temperature, kCUDA);
  const c10::cuda::CUDAGuard guard(hidden_in.device());
  const int64_t n = hidden_in.size(0);
  auto terms = make_token_tensors(n, advantages, pg_weight, sft_weight, policy, offpolicy,
                                  old_logprobs, ref_logprobs, rollout_logprobs, kCUDA);
  auto p = make_loss_params(clip_low, clip_high, clip_ratio_c, beta, kl_estimator, luffy_gamma,
                            tis_cap, old_logprobs.has_value(), ref_logprobs.has_value(),
                            rollout_logprobs.has_value(), with_entropy);
  const Tensor hidden = hidden_in.contiguous(), weight = weight_in.contiguous();
  const Tensor targets = targets_in.contiguous(), b = bias_f32(bias);
  need_bias = need_bias && bias.has_value();
  const bool grad = need_hidden || need_weight || need_bias;
  Grads g = make_grads(hidden, weight, need_hidden, need_weight, need_bias);
  auto f32 = hidden.options().dtype(at::kFloat);
  Tensor loss_acc = at::zeros({}, hidden.options().dtype(at::kDouble));
  Tensor stats_acc = at::zeros({kNumStats}, hidden.options().dtype(at::kDouble));
  const int64_t v = weight.size(0);
  if (n > 0) {
    const int64_t c = chunk_rows(chunk_size, n, v);
    Tensor block = at::empty({c, v}, hidden.options());
    Tensor row_loss = at::empty({c}, f32), row_stats = at::empty({c, kNumStats}, f32);
    auto stream = c10::cuda::getCurrentCUDAStream();
    for (int64_t s = 0; s < n; s += c) {
      const int64_t rows = std::min(c, n - s);
      Tensor z = block.narrow(0, 0, rows);
      Tensor h = hidden.narrow(0, s, rows);
      at::mm_out(z, h, weight.t());
      RGPO_CUDA_CHECK(cuda::launch_policy_loss(
          z.data_ptr(), dtype_of(z), ptr_or_null(b), targets.data_ptr<int64_t>() + s, rows, v,
          static_cast<float>(1.0 / temperature), token_ptrs(terms, s), p, grad,
          row_loss.data_ptr<float>(), row_stats.data_ptr<float>(), mutable_ptr_or_null(g.db), stream));
      loss_acc.add_(row_loss.narrow(0, 0, rows).sum(at::kDouble));
      stats_acc.add_(row_stats.narrow(0, 0, rows).sum(0, false, at::kDouble));
      if (grad) gradient_gemms(z, h, weight, g, s);
    }
  }
  auto [dh, dw, db] = finish(g, hidden, weight, bias);
  return {loss_acc.to(at::kFloat), stats_acc.to(at::kFloat), dh, dw, db};
}

Tensor pack_bf16_cuda(at::TensorList tensors, at::IntArrayRef offsets, int64_t total) {
  TORCH_CHECK(tensors.size() == offsets.size(), "rgpo_fast: pack_bf16 got ", tensors.size(),
              " tensors but ", offsets.size(), " offsets");
  TORCH_CHECK(!tensors.empty(), "rgpo_fast: pack_bf16 needs at least one tensor");
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  const int64_t count = static_cast<int64_t>(tensors.size());
  std::vector<Tensor> keep;  // contiguous sources stay alive until the kernel has run
  keep.reserve(count);
  // Metadata on the host, one H2D copy: {ptr, dtype, numel, offset} + block prefix sums.
  Tensor meta = at::empty({4 * count + count + 1}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* m = meta.data_ptr<int64_t>();
  int64_t* bs = m + 4 * count;
  int64_t blocks = 0;
  for (int64_t i = 0; i < count; ++i) {
    const Tensor& t = tensors[i];
    check_device("pack_bf16 input", t, kCUDA);
    TORCH_CHECK(t.device() == tensors[0].device(), "rgpo_fast: pack_bf16 inputs on several devices");
    TORCH_CHECK(offsets[i] >= 0 && offsets[i] + t.numel() <= total, "rgpo_fast: pack_bf16 tensor ",
                i, " (", t.numel(), " elements at offset ", offsets[i], ") does not fit in ", total);
    keep.push_back(t.contiguous());
    m[4 * i + 0] = reinterpret_cast<int64_t>(keep.back().data_ptr());
    m[4 * i + 1] = static_cast<int64_t>(dtype_of(keep.back()));
    m[4 * i + 2] = t.numel();
    m[4 * i + 3] = offsets[i];
    bs[i] = blocks;
    blocks += (t.numel() + cuda::kPackBlockElems - 1) / cuda::kPackBlockElems;
  }
  bs[count] = blocks;
  auto opts = tensors[0].options();
  Tensor meta_d = meta.to(opts.dtype(at::kLong), /*non_blocking=*/true);
  Tensor out = at::zeros({total}, opts.dtype(at::kBFloat16));
  const int64_t* md = meta_d.data_ptr<int64_t>();
  RGPO_CUDA_CHECK(cuda::launch_pack_bf16(md, md + 4 * count, count, blocks, out.data_ptr(),
                                         c10::cuda::getCurrentCUDAStream()));
  // The pinned host buffer may be freed now: torch's caching host allocator keeps it until
  // the asynchronous copy that reads it has completed.
  return out;
}

}  // namespace
}  // namespace rgpo_fast

TORCH_LIBRARY_IMPL(rgpo_fast, CUDA, m) {
  m.impl("logprob_forward", &rgpo_fast::logprob_forward_cuda);
  m.impl("logprob_backward", &rgpo_fast::logprob_backward_cuda);
  m.impl("token_loss", &rgpo_fast::token_loss_cuda);
  m.impl("policy_loss_forward_backward", &rgpo_fast::policy_loss_forward_backward_cuda);
  m.impl("pack_bf16", &rgpo_fast::pack_bf16_cuda);
}

extern "C" PyMODINIT_FUNC PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
