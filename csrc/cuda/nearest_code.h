// nearest_code on CUDA: the launcher interface. Plain C++ (raw pointers, sizes, a stream), so the
// kernels in nearest_code.cu compile with nvcc on machines whose torch has no CUDA.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "scalar_kind.h"

namespace sgcvq::gpu {


// Which candidate path a search takes (the op's `mode`; docs/method.md, the mode decision):
//   kFloat32:      float32 inputs take the FFMA (all-fp32) tile path   ("exact_fp32");
//   kLowPrecision: float32 inputs take the TF32 tensor-core tile path ("fast_exact");
//   kFastest:      the fastest certified path measured on this backend ("exact", the default):
//                  the FFMA path for float32 (the TF32 path's certificate fails wholesale on
//                  post-ReLU data: 80 ms against 27 ms, BASELINE.md), or the Hopper kernel of
//                  nearest_code_sm90.cu where the caller asks for it (want_sm90 below).
// bfloat16 / float16 inputs take their tensor-core path in every mode (the products are exact).
// Every path re-scores its candidates in fp32 and certifies them, so all modes return the argmin
// of the same fp32 distances.
enum class SearchMode { kFloat32, kLowPrecision, kFastest };

// Whether a search takes the Hopper kernel (nearest_code_sm90.h): the caller wants it (the
// op's `kernel` argument, chosen by sgcvq/gpu_dispatch.py; SGCVQ_CUDA_SM90 for the plain op), mode
// kFastest, and sm90_search_supported (an sm_90 device, float32 / bfloat16, 16 <= D <= 256).
// Decide once per call and pass the answer to both functions below.
bool nearest_code_uses_sm90(ScalarKind dtype, int64_t D, SearchMode mode, bool want_sm90);

// Bytes of device scratch nearest_code_launch needs: code norms, the packed (distance, index)
// results, with labels (C > 0) the counting sort of tokens by class, and the sm90 path's own.
size_t nearest_code_workspace_bytes(int64_t N, int64_t K, int64_t C, int64_t D, bool sm90);

// index[i] = argmin_k ||x_i - e_k||^2 over token i's code group (all K codes without labels or
// for label -1), ties to the lowest index; sqdist[i] = that fp32 distance. Inputs contiguous,
// labels and offsets already validated (labels in [-1, C), offsets non-decreasing from 0 to K,
// no label pointing at an empty group). Nothing here synchronises with the host.
cudaError_t nearest_code_launch(const void* x,            // [N, D] dtype
                                const void* codebook,     // [K, D] dtype
                                ScalarKind dtype,
                                const int32_t* labels,    // [N] in [-1, C), or nullptr (C == 0)
                                const int32_t* offsets,   // [C + 1], or nullptr (C == 0)
                                int64_t N, int64_t D, int64_t K, int64_t C, SearchMode mode, bool sm90,
                                void* workspace,          // nearest_code_workspace_bytes(N, K, C)
                                int64_t* index,           // [N] out
                                float* sqdist,            // [N] out
                                cudaStream_t stream);

}  // namespace sgcvq::gpu
