// ema_update on CUDA: the launcher interface (raw pointers, sizes, a stream; CUDA headers only).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace sgcvq::gpu {

// Bytes of device scratch ema_update_launch needs (the total count, one double).
size_t ema_update_workspace_bytes();

// In place, float32 (docs/method.md §1.6, the arithmetic of csrc/cpu/ema_update_cpu.cpp):
//   N <- decay N + (1 - decay) counts;  M <- decay M + (1 - decay) sums;
//   codebook[k] = M[k] / ((N[k] + eps) / (sum N + K eps) * sum N).
cudaError_t ema_update_launch(float* cluster_size,   // [K] in/out
                              float* embed_sum,      // [K, D] in/out
                              float* codebook,       // [K, D] out
                              const float* counts,   // [K]
                              const float* sums,     // [K, D]
                              int64_t K, int64_t D, double decay, double eps,
                              void* workspace,       // ema_update_workspace_bytes()
                              cudaStream_t stream);

}  // namespace sgcvq::gpu
