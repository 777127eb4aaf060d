// Multi-tensor cast-and-copy: many parameters (fp32 / bf16 / fp16, any sizes) packed into one
// bf16 buffer in ONE kernel launch, for the weight sync into the rollout engine (one
// contiguous buffer to hand over instead of hundreds of small casts and copies).
//
// Work is split into blocks of kPackBlockElems elements of one tensor each; block_start
// holds the prefix sums of the per-tensor block counts, and a CUDA block finds its tensor by
// binary search over it (log2(count) reads of a small cached array). Each thread converts
// kPackBlockElems / blockDim elements with coalesced, strided accesses; fp32 -> bf16 rounds
// to nearest even (__float2bfloat16_rn), exactly like torch's .to(torch.bfloat16).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kernels.h"

namespace rgpo_fast {
namespace cuda {
namespace {

constexpr int kPackThreads = 256;

__device__ __forceinline__ float to_float(const void* src, int dtype, int64_t k) {
  switch (static_cast<DType>(dtype)) {
    case DType::kBFloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(src)[k]);
    case DType::kFloat16:
      return __half2float(static_cast<const __half*>(src)[k]);
    default:
      return static_cast<const float*>(src)[k];
  }
}

__global__ void __launch_bounds__(kPackThreads)
    pack_bf16_kernel(const int64_t* __restrict__ meta,         // (count, 4): ptr, dtype, numel, offset
                     const int64_t* __restrict__ block_start,  // (count + 1,) prefix block counts
                     int64_t count,
                     __nv_bfloat16* __restrict__ dst) {        // packed output
  const int64_t b = blockIdx.x;
  // Largest i with block_start[i] <= b (tensors with zero blocks are skipped naturally).
  int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) >> 1;
    if (block_start[mid] <= b) lo = mid; else hi = mid - 1;
  }
  const int64_t* m = meta + 4 * lo;
  const void* src = reinterpret_cast<const void*>(m[0]);
  const int dtype = static_cast<int>(m[1]);
  const int64_t numel = m[2];
  __nv_bfloat16* out = dst + m[3];
  const int64_t begin = (b - block_start[lo]) * kPackBlockElems;
  const int64_t end = begin + kPackBlockElems < numel ? begin + kPackBlockElems : numel;
  if (dtype == static_cast<int>(DType::kBFloat16)) {
    const __nv_bfloat16* s = static_cast<const __nv_bfloat16*>(src);
    for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x) out[k] = s[k];
  } else {
    for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x) {
      out[k] = __float2bfloat16_rn(to_float(src, dtype, k));
    }
  }
}

}  // namespace

cudaError_t launch_pack_bf16(const int64_t* meta, const int64_t* block_start, int64_t count,
                             int64_t total_blocks, void* dst, cudaStream_t stream) {
  if (count == 0 || total_blocks == 0) return cudaSuccess;
  pack_bf16_kernel<<<total_blocks, kPackThreads, 0, stream>>>(
      meta, block_start, count, static_cast<__nv_bfloat16*>(dst));
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace rgpo_fast
