// CPU implementations of the fused linear ops (declarations). Inputs are checked in
// csrc/bindings.cpp; these functions assume contiguous CPU tensors of matching dtypes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

#include "common/token_loss.h"

namespace rgpo_fast {
namespace cpu {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Detached per-token inputs of the policy loss (TokenTerms), all (N,) contiguous.
struct TokenTensors {
  Tensor advantages;  // fp32
  Tensor pg_weight;   // fp32
  Tensor sft_weight;  // fp32
  Tensor policy;      // bool
  OptTensor offpolicy;         // bool
  OptTensor old_logprobs;      // fp32
  OptTensor ref_logprobs;      // fp32
  OptTensor rollout_logprobs;  // fp32
};

// Rows per chunk when the caller passes chunk_size <= 0: one block of about 16M elements,
// the same working set as the chunked PyTorch backend (ops/torch_chunked.py).
int64_t auto_chunk_size(int64_t n_tokens, int64_t vocab);

// -> logp (N,), lse (N,), entropy (N,) or (0,) when !with_entropy; all fp32. `threshold`
// (N,) fp32: a truncated sampler's per-row cut of logit / T; the sums skip what is below it
// (the target aside).
std::tuple<Tensor, Tensor, Tensor> logprob_forward(const Tensor& hidden, const Tensor& weight,
                                                   const OptTensor& bias, const Tensor& targets,
                                                   double temperature, bool with_entropy,
                                                   int64_t chunk_size,
                                                   const OptTensor& threshold);

// -> dhidden (N, H), dweight (V, H), dbias (V,); a gradient not asked for is a (0,) tensor.
std::tuple<Tensor, Tensor, Tensor> logprob_backward(
    const Tensor& hidden, const Tensor& weight, const OptTensor& bias, const Tensor& targets,
    const Tensor& lse, const OptTensor& entropy, double temperature, const Tensor& g_logp,
    const OptTensor& g_ent, bool need_hidden, bool need_weight, bool need_bias,
    int64_t chunk_size, const OptTensor& threshold);

// Per-token loss on given log-probs: -> loss (N,), dloss/dlogp (N,), stats (kNumStats,).
std::tuple<Tensor, Tensor, Tensor> token_loss(const Tensor& logp, const TokenTensors& terms,
                                              const OptTensor& entropy, const LossParams& p);

// Loss, stats and all gradients in one sweep of three matmuls per chunk.
// -> loss (), stats (kNumStats,), dhidden, dweight, dbias ((0,) when not asked for).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> policy_loss_forward_backward(
    const Tensor& hidden, const Tensor& weight, const OptTensor& bias, const Tensor& targets,
    const TokenTensors& terms, const LossParams& p, double temperature, bool with_entropy,
    bool need_hidden, bool need_weight, bool need_bias, int64_t chunk_size);

// Packs tensors (any floating dtype) into one bf16 buffer of `total` elements, tensor i
// flattened at offsets[i].
Tensor pack_bf16(at::TensorList tensors, at::IntArrayRef offsets, int64_t total);

}  // namespace cpu
}  // namespace rgpo_fast
