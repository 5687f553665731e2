// ema_update on CUDA: two kernels, no host synchronisation.
//   1. one block blends the counts, N <- g N + h counts, and sums N in double (a fixed reduction
//      tree: deterministic, and no fp32 drift at large K);
//   2. one fused elementwise pass over [K, D]: M <- g M + h sums and codebook = M / smoothed(N).
// NOTE: the products and sums are written with __fmul_rn / __fadd_rn / __fdiv_rn so nvcc does not
// contract them into FMAs: the arithmetic is then the CPU kernel's, operation for operation
// (csrc/cpu/ema_update_cpu.cpp); only the order of the double-precision total differs.
#include "ema_update.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "cuda_try.h"

namespace sgcvq::gpu {
namespace {

constexpr int kBlendThreads = 1024;
constexpr int kThreads = 256;

__global__ void __launch_bounds__(kBlendThreads)
blend_counts_kernel(float* __restrict__ cluster_size,  // [K] in/out
                    const float* __restrict__ counts,  // [K]
                    int64_t K, float g, float h,
                    double* __restrict__ total) {      // [1] out: sum_k N[k]
  __shared__ double warp_sums[kBlendThreads / 32];
  double s = 0.0;
  for (int64_t k = threadIdx.x; k < K; k += kBlendThreads) {
    const float n = __fadd_rn(__fmul_rn(g, cluster_size[k]), __fmul_rn(h, counts[k]));
    cluster_size[k] = n;
    s += static_cast<double>(n);
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x < 32) {
    s = warp_sums[threadIdx.x];
#pragma unroll
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x == 0) *total = s;
  }
}

__global__ void __launch_bounds__(kThreads)
blend_sums_kernel(const float* __restrict__ cluster_size,  // [K], already blended
                  float* __restrict__ embed_sum,           // [K, D] in/out
                  float* __restrict__ codebook,            // [K, D] out
                  const float* __restrict__ sums,          // [K, D]
                  int64_t K, int64_t D, float g, float h, double eps,
                  const double* __restrict__ total) {      // [1]
  const double t = *total;
  const float tot = static_cast<float>(t);
  const float denom = static_cast<float>(t + static_cast<double>(K) * eps);
  const float fe = static_cast<float>(eps);
  const int64_t n = K * D;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = j / D;
    // Laplace smoothing, in the CPU kernel's order: (N + eps) / denom * total.
    const float smoothed = __fmul_rn(__fdiv_rn(__fadd_rn(cluster_size[k], fe), denom), tot);
    const float m = __fadd_rn(__fmul_rn(g, embed_sum[j]), __fmul_rn(h, sums[j]));
    embed_sum[j] = m;
    codebook[j] = __fdiv_rn(m, smoothed);  // a division, as vector-quantize-pytorch does
  }
}

}  // namespace

size_t ema_update_workspace_bytes() { return sizeof(double); }

cudaError_t ema_update_launch(float* cluster_size, float* embed_sum, float* codebook, const float* counts,
                              const float* sums, int64_t K, int64_t D, double decay, double eps,
                              void* workspace, cudaStream_t stream) {
  if (K == 0) return cudaSuccess;
  const float g = static_cast<float>(decay), h = static_cast<float>(1.0 - decay);
  double* total = static_cast<double*>(workspace);
  blend_counts_kernel<<<1, kBlendThreads, 0, stream>>>(cluster_size, counts, K, g, h, total);
  SGCVQ_CUDA_TRY(cudaGetLastError());
  if (D == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((K * D + kThreads - 1) / kThreads, 65536);
  blend_sums_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(cluster_size, embed_sum, codebook,
                                                                            sums, K, D, g, h, eps, total);
  return cudaGetLastError();
}

}  // namespace sgcvq::gpu
