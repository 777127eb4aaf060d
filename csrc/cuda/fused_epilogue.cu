// CUDA epilogue of the fused linear ops: everything after the cuBLAS GEMM that produced a
// (rows, V) logits block - log-sum-exp, target gather, entropy, the per-token policy loss
// and the softmax gradient written in place - in one CUDA block per row.
//
// Statistics of a row come from ONE read of the row: each thread keeps an online triple
// (m, s, t) = (max y, sum exp(y - m), sum exp(y - m) (y - m)) over its elements, rescaled
// when its max grows (one exp per element either way), then the triples are merged across
// the warp and the block. With S = s and M = m of the row:
//   lse = M + log S,  logp = y_t - lse,  H = log S - t / S.
// The gradient pass reads the row again (from L2: a block works on one row at a time) and
// writes dz in the block's dtype for the gradient GEMMs.
//
// Numerics: y = (x + b) / T in fp32 with the bias added in fp32 (one rounding of the
// logits for half inputs); expf (full precision, no --use_fast_math) and fp32 sums, merged
// as a tree across threads.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/token_loss.h"
#include "cuda/kernels.h"

namespace rgpo_fast {
namespace cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

template <typename T>
__device__ __forceinline__ float load(const T* p, int64_t k);
template <>
__device__ __forceinline__ float load<float>(const float* p, int64_t k) { return p[k]; }
template <>
__device__ __forceinline__ float load<__nv_bfloat16>(const __nv_bfloat16* p, int64_t k) {
  return __bfloat162float(p[k]);
}
template <>
__device__ __forceinline__ float load<__half>(const __half* p, int64_t k) {
  return __half2float(p[k]);
}

template <typename T>
__device__ __forceinline__ void store(T* p, int64_t k, float v);
template <>
__device__ __forceinline__ void store<float>(float* p, int64_t k, float v) { p[k] = v; }
template <>
__device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16* p, int64_t k, float v) {
  p[k] = __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ void store<__half>(__half* p, int64_t k, float v) {
  p[k] = __float2half_rn(v);
}

// Online softmax statistics of a set of scaled logits y.
struct Stats {
  float m;  // max y
  float s;  // sum exp(y - m)
  float t;  // sum exp(y - m) * (y - m)   (entropy term)
};

__device__ __forceinline__ Stats merge(Stats a, Stats b) {
  if (b.m == -INFINITY) return a;
  if (a.m == -INFINITY) return b;
  const float mx = fmaxf(a.m, b.m);
  const float da = a.m - mx, db = b.m - mx;
  const float ca = expf(da), cb = expf(db);
  // Shifting the reference from m_i to mx adds (m_i - mx) to every (y - m_i).
  return {mx, a.s * ca + b.s * cb, ca * (a.t + da * a.s) + cb * (b.t + db * b.s)};
}

__device__ __forceinline__ Stats warp_merge(Stats v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Stats o{__shfl_xor_sync(0xffffffffu, v.m, off), __shfl_xor_sync(0xffffffffu, v.s, off),
            __shfl_xor_sync(0xffffffffu, v.t, off)};
    v = merge(v, o);
  }
  return v;
}

// Merge the per-thread statistics of the block; every thread gets the row's result.
__device__ Stats block_merge(Stats v) {
  __shared__ Stats smem[kWarps];
  __shared__ Stats result;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_merge(v);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    Stats w = lane < kWarps ? smem[lane] : Stats{-INFINITY, 0.0f, 0.0f};
    w = warp_merge(w);
    if (lane == 0) result = w;
  }
  __syncthreads();
  return result;
}

// Per-thread online statistics over the row (strided by blockDim for coalescing).
template <typename T, bool WITH_ENT>
__device__ __forceinline__ Stats online_row_stats(const T* row, const float* bias, int64_t vocab,
                                           float inv_t) {
  Stats st{-INFINITY, 0.0f, 0.0f};
  for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
    const float y = (load(row, k) + (bias != nullptr ? bias[k] : 0.0f)) * inv_t;
    if (y > st.m) {
      const float d = st.m - y;  // <= 0; -inf on the first element (exp -> 0)
      const float c = expf(d);
      if (WITH_ENT) st.t = st.m == -INFINITY ? 0.0f : c * (st.t + d * st.s);
      st.s = st.s * c + 1.0f;
      st.m = y;
    } else {
      const float d = y - st.m;
      const float e = expf(d);
      st.s += e;
      if (WITH_ENT) st.t += e * d;
    }
  }
  return block_merge(st);
}

template <typename T, bool WITH_ENT>
__global__ void __launch_bounds__(kThreads)
    logprob_forward_kernel(const T* __restrict__ z,          // (rows, V) logits, no bias
                           const float* __restrict__ bias,   // (V,) fp32 or null
                           const int64_t* __restrict__ targets,  // (rows,)
                           int64_t vocab, float inv_t,
                           float* __restrict__ logp,          // (rows,) out
                           float* __restrict__ lse,           // (rows,) out
                           float* __restrict__ ent) {         // (rows,) out or null
  const int64_t r = blockIdx.x;
  const T* row = z + r * vocab;
  const Stats st = online_row_stats<T, WITH_ENT>(row, bias, vocab, inv_t);
  if (threadIdx.x == 0) {
    const int64_t tg = targets[r];
    const float y_t = (load(row, tg) + (bias != nullptr ? bias[tg] : 0.0f)) * inv_t;
    const float log_s = logf(st.s);
    logp[r] = y_t - st.m - log_s;
    lse[r] = st.m + log_s;
    if (WITH_ENT) ent[r] = log_s - st.t / st.s;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    logprob_backward_kernel(T* __restrict__ z,                 // (rows, V) in: logits, out: dz
                            const float* __restrict__ bias,    // (V,) fp32 or null
                            const int64_t* __restrict__ targets,
                            int64_t vocab, float inv_t,
                            const float* __restrict__ lse,     // (rows,)
                            const float* __restrict__ g_logp,  // (rows,)
                            const float* __restrict__ g_ent,   // (rows,) or null
                            const float* __restrict__ ent,     // (rows,) or null
                            float* __restrict__ db) {          // (V,) fp32 accumulator or null
  const int64_t r = blockIdx.x;
  T* row = z + r * vocab;
  const int64_t tg = targets[r];
  const float gl = g_logp[r], gh = g_ent != nullptr ? g_ent[r] : 0.0f;
  const float h = ent != nullptr ? ent[r] : 0.0f, ls = lse[r];
  for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
    const float lp = (load(row, k) + (bias != nullptr ? bias[k] : 0.0f)) * inv_t - ls;
    const float p = expf(lp);
    // d logp_t / dy_k = 1[k = t] - p_k;  dH / dy_k = -p_k (log p_k + H);  dy/dx = 1/T.
    float d = -p * (gl + gh * (lp + h));
    if (k == tg) d += gl;
    d *= inv_t;
    store(row, k, d);
    if (db != nullptr) atomicAdd(db + k, d);
  }
}

__device__ __forceinline__ TokenIn token_in(const TokenPtrs& tp, int64_t i, float logp,
                                            float ent) {
  TokenIn t;
  t.logp = logp;
  t.adv = tp.adv[i];
  t.pg_weight = tp.pg_weight[i];
  t.sft_weight = tp.sft_weight[i];
  t.policy = tp.policy[i];
  t.offpolicy = tp.offpolicy != nullptr && tp.offpolicy[i];
  t.old_logp = tp.old_logp != nullptr ? tp.old_logp[i] : 0.0f;
  t.ref_logp = tp.ref_logp != nullptr ? tp.ref_logp[i] : 0.0f;
  t.rollout_logp = tp.rollout_logp != nullptr ? tp.rollout_logp[i] : 0.0f;
  t.entropy = ent;
  return t;
}

template <typename T, bool WITH_ENT>
__global__ void __launch_bounds__(kThreads)
    policy_loss_kernel(T* __restrict__ z,                // (rows, V) in: logits, out: dz
                       const float* __restrict__ bias,   // (V,) fp32 or null
                       const int64_t* __restrict__ targets,
                       int64_t vocab, float inv_t,
                       TokenPtrs tokens,                 // per-token inputs of this chunk
                       LossParams params, bool write_grad,
                       float* __restrict__ row_loss,     // (rows,) out
                       float* __restrict__ row_stats,    // (rows, kNumStats) out
                       float* __restrict__ db) {         // (V,) fp32 accumulator or null
  __shared__ float s_grad;
  const int64_t r = blockIdx.x;
  T* row = z + r * vocab;
  const int64_t tg = targets[r];
  const Stats st = online_row_stats<T, WITH_ENT>(row, bias, vocab, inv_t);
  const float lse = st.m + logf(st.s);
  if (threadIdx.x == 0) {
    const float y_t = (load(row, tg) + (bias != nullptr ? bias[tg] : 0.0f)) * inv_t;
    const float ent = WITH_ENT ? logf(st.s) - st.t / st.s : 0.0f;
    TokenOut o;
    token_loss_and_grad(params, token_in(tokens, r, y_t - lse, ent), o);
    row_loss[r] = o.loss;
    for (int j = 0; j < kNumStats; ++j) row_stats[r * kNumStats + j] = o.stats[j];
    s_grad = o.grad;
  }
  if (!write_grad) return;
  __syncthreads();
  const float g = s_grad;
  for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
    const float p = expf((load(row, k) + (bias != nullptr ? bias[k] : 0.0f)) * inv_t - lse);
    const float d = ((k == tg ? g : 0.0f) - g * p) * inv_t;
    store(row, k, d);
    if (db != nullptr) atomicAdd(db + k, d);
  }
}

__global__ void token_loss_kernel(const float* __restrict__ logp,
                                  const float* __restrict__ entropy,  // (n,) or null
                                  int64_t n, TokenPtrs tokens, LossParams params,
                                  float* __restrict__ loss, float* __restrict__ grad,
                                  float* __restrict__ row_stats) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  TokenOut o;
  token_loss_and_grad(params, token_in(tokens, i, logp[i], entropy ? entropy[i] : 0.0f), o);
  loss[i] = o.loss;
  grad[i] = o.grad;
  for (int j = 0; j < kNumStats; ++j) row_stats[i * kNumStats + j] = o.stats[j];
}

// Calls f(T*) with the element type of `dtype`.
template <typename F>
cudaError_t dispatch(DType dtype, const void* p, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      f(static_cast<float*>(const_cast<void*>(p)));
      break;
    case DType::kBFloat16:
      f(static_cast<__nv_bfloat16*>(const_cast<void*>(p)));
      break;
    case DType::kFloat16:
      f(static_cast<__half*>(const_cast<void*>(p)));
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_logprob_forward(const void* z, DType dtype, const float* bias,
                                   const int64_t* targets, int64_t rows, int64_t vocab,
                                   float inv_t, float* logp, float* lse, float* ent,
                                   cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return dispatch(dtype, z, [&](auto* zp) {
    using T = std::remove_pointer_t<decltype(zp)>;
    if (ent != nullptr) {
      logprob_forward_kernel<T, true><<<rows, kThreads, 0, stream>>>(zp, bias, targets, vocab,
                                                                     inv_t, logp, lse, ent);
    } else {
      logprob_forward_kernel<T, false><<<rows, kThreads, 0, stream>>>(zp, bias, targets, vocab,
                                                                      inv_t, logp, lse, ent);
    }
  });
}

cudaError_t launch_logprob_backward(void* z, DType dtype, const float* bias,
                                    const int64_t* targets, int64_t rows, int64_t vocab,
                                    float inv_t, const float* lse, const float* g_logp,
                                    const float* g_ent, const float* ent, float* db,
                                    cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return dispatch(dtype, z, [&](auto* zp) {
    using T = std::remove_pointer_t<decltype(zp)>;
    logprob_backward_kernel<T><<<rows, kThreads, 0, stream>>>(zp, bias, targets, vocab, inv_t,
                                                              lse, g_logp, g_ent, ent, db);
  });
}

cudaError_t launch_policy_loss(void* z, DType dtype, const float* bias, const int64_t* targets,
                               int64_t rows, int64_t vocab, float inv_t, TokenPtrs tokens,
                               LossParams params, bool write_grad, float* row_loss,
                               float* row_stats, float* db, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return dispatch(dtype, z, [&](auto* zp) {
    using T = std::remove_pointer_t<decltype(zp)>;
    if (params.has_entropy) {
      policy_loss_kernel<T, true><<<rows, kThreads, 0, stream>>>(
          zp, bias, targets, vocab, inv_t, tokens, params, write_grad, row_loss, row_stats, db);
    } else {
      policy_loss_kernel<T, false><<<rows, kThreads, 0, stream>>>(
          zp, bias, targets, vocab, inv_t, tokens, params, write_grad, row_loss, row_stats, db);
    }
  });
}

cudaError_t launch_token_loss(const float* logp, const float* entropy, int64_t n,
                              TokenPtrs tokens, LossParams params, float* loss, float* grad,
                              float* row_stats, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  token_loss_kernel<<<blocks, threads, 0, stream>>>(logp, entropy, n, tokens, params, loss, grad,
                                                    row_stats);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace rgpo_fast
