// nearest_code on CUDA: the launcher interface. Plain C++ (raw pointers, sizes, a stream), so the
// kernels in nearest_code.cu compile with nvcc on machines whose torch has no CUDA.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "scalar_kind.h"

namespace sgcvq::gpu {

// Bytes of device scratch nearest_code_launch needs: code norms, the packed (distance, index)
// results, and with labels (C > 0) the counting sort of tokens by class.
size_t nearest_code_workspace_bytes(int64_t N, int64_t K, int64_t C);

// index[i] = argmin_k ||x_i - e_k||^2 over token i's code group (all K codes without labels or
// for label -1), ties to the lowest index; sqdist[i] = that fp32 distance. Inputs contiguous,
// labels and offsets already validated (labels in [-1, C), offsets non-decreasing from 0 to K,
// no label pointing at an empty group). Nothing here synchronises with the host.
//   fast_exact = false: float32 inputs take the FFMA (all-fp32) tile path;
//   fast_exact = true:  float32 inputs take the TF32 tensor-core tile path.
//   bfloat16 / float16 inputs take their tensor-core path in both modes (the products are exact).
// Every path re-scores its candidates in fp32 and certifies them, so both modes return the argmin
// of the same fp32 distances.
cudaError_t nearest_code_launch(const void* x,            // [N, D] dtype
                                const void* codebook,     // [K, D] dtype
                                ScalarKind dtype,
                                const int32_t* labels,    // [N] in [-1, C), or nullptr (C == 0)
                                const int32_t* offsets,   // [C + 1], or nullptr (C == 0)
                                int64_t N, int64_t D, int64_t K, int64_t C, bool fast_exact,
                                void* workspace,          // nearest_code_workspace_bytes(N, K, C)
                                int64_t* index,           // [N] out
                                float* sqdist,            // [N] out
                                cudaStream_t stream);

}  // namespace sgcvq::gpu
