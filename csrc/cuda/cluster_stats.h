// cluster_stats on CUDA: the launcher interface (raw pointers, sizes, a stream; CUDA headers only).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "scalar_kind.h"

namespace sgcvq::gpu {

// Bytes of device scratch cluster_stats_launch needs (0 for the atomic mode).
size_t cluster_stats_workspace_bytes(int64_t N, int64_t D, int64_t K, bool deterministic);

// counts[k] = #{i : index[i] = k}, sums[k] = sum_{index[i] = k} x[i], float32 accumulation.
// index must already be validated to lie in [0, K). Both outputs are fully written (zeroed first).
//   deterministic = false: warp-aggregated atomics (fast; the order of the float additions varies).
//   deterministic = true:  stable radix sort by index, then per-segment sums in token order over
//                          fixed pieces, combined in piece order: bit-identical run to run.
// Counts are exact below 2^24 tokens per code (float32 integers).
cudaError_t cluster_stats_launch(const int64_t* index,  // [N]
                                 const void* x,         // [N, D] dtype
                                 ScalarKind dtype, int64_t N, int64_t D, int64_t K, bool deterministic,
                                 void* workspace,       // cluster_stats_workspace_bytes(...)
                                 float* counts,         // [K] out
                                 float* sums,           // [K, D] out
                                 cudaStream_t stream);

}  // namespace sgcvq::gpu
