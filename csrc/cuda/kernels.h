// Launchers of the CUDA kernels of rgpo_fast (csrc/cuda/*.cu).
//
// Kernels take raw pointers and a stream and include no torch header, so every .cu file
// compiles with nvcc alone (tests/test_csrc_build.py builds them for sm_80 and sm_90 on
// machines without a GPU or a CUDA build of torch). The torch side - checks, allocation, the
// cuBLAS GEMMs through at::mm - is csrc/cuda/bindings_cuda.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/token_loss.h"

namespace rgpo_fast {
namespace cuda {

// Element type of a logits block or of a tensor to pack.
enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Row epilogue of the log-prob forward. z: (rows, V) logits WITHOUT bias (bias, if not null,
// is the fp32 bias added on load); one CUDA block per row, one read of the row.
// Writes logp, lse (and entropy when `ent` is not null), fp32 (rows,).
cudaError_t launch_logprob_forward(const void* z, DType dtype, const float* bias,
                                   const int64_t* targets, int64_t rows, int64_t vocab,
                                   float inv_t, float* logp, float* lse, float* ent,
                                   cudaStream_t stream);

// Row epilogue of the log-prob backward, in place: z (rows, V) logits (no bias) ->
// dz_k = (g_l (1[k = t] - p_k) - g_h p_k (log p_k + H)) / T in the same dtype.
// g_ent / ent may be null (no entropy gradient). db (V,) fp32 accumulates sum_rows dz when
// not null (atomics).
cudaError_t launch_logprob_backward(void* z, DType dtype, const float* bias,
                                    const int64_t* targets, int64_t rows, int64_t vocab,
                                    float inv_t, const float* lse, const float* g_logp,
                                    const float* g_ent, const float* ent, float* db,
                                    cudaStream_t stream);

// Per-token inputs of the loss for a chunk (pointers already offset to the chunk's first
// token; optional ones null).
struct TokenPtrs {
  const float* adv;
  const float* pg_weight;
  const float* sft_weight;
  const bool* policy;
  const bool* offpolicy;
  const float* old_logp;
  const float* ref_logp;
  const float* rollout_logp;
};

// Fused policy-loss epilogue: per row, log-sum-exp (+ entropy), logp, the per-token loss and
// g = dloss/dlogp (csrc/common/token_loss.h), then - when `write_grad` - the softmax
// gradient dz = g (1[k = t] - p_k) / T in place over z. Per-row loss and stats go to
// row_loss (rows,) and row_stats (rows, kNumStats) for a deterministic reduction by the
// caller. db as in the backward.
cudaError_t launch_policy_loss(void* z, DType dtype, const float* bias, const int64_t* targets,
                               int64_t rows, int64_t vocab, float inv_t, TokenPtrs tokens,
                               LossParams params, bool write_grad, float* row_loss,
                               float* row_stats, float* db, cudaStream_t stream);

// The per-token loss alone on given log-probs (n tokens).
cudaError_t launch_token_loss(const float* logp, const float* entropy, int64_t n,
                              TokenPtrs tokens, LossParams params, float* loss, float* grad,
                              float* row_stats, cudaStream_t stream);

// Multi-tensor cast-and-copy: ONE launch packs `count` tensors into one bf16 buffer.
// meta is a device array of 4 * count int64: {src pointer, DType, numel, dst offset} per
// tensor; block_start is a device array of count + 1 int64 prefix sums of the number of
// kPackBlockElems-element blocks of each tensor (block_start[count] = grid size).
constexpr int64_t kPackBlockElems = 4096;
cudaError_t launch_pack_bf16(const int64_t* meta, const int64_t* block_start, int64_t count,
                             int64_t total_blocks, void* dst, cudaStream_t stream);

}  // namespace cuda
}  // namespace rgpo_fast
