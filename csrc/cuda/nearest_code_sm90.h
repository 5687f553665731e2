// nearest_code on Hopper (sm_90a): wgmma bf16 candidates, margin lists, float32 re-score.
// The launcher interface; the kernels live in nearest_code_sm90.cu. Verified on an H100 (2026-11-28:
// every nearest_code test of tests/test_cuda.py; memcheck of it is still to run). nearest_code_launch
// takes it for mode "exact" when the caller asks (sgcvq/gpu_dispatch.json makes it the float32
// default on sm_90; SGCVQ_CUDA_SM90=1 for the plain op), on a device of compute capability 9.0, for
// float32 / bfloat16 inputs with 16 <= D <= 256 and D % 8 == 0.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "scalar_kind.h"

namespace sgcvq::gpu {

// True when this path can run the search: the current device is sm_90, this build holds sm_90a
// code, and the dtype and D fit. Whether it is wanted is the caller's choice (nearest_code.h).
bool sm90_search_supported(ScalarKind dtype, int64_t D);

// Bytes of device scratch the sm90 path needs on top of nearest_code_workspace_bytes' own.
size_t sm90_workspace_bytes(int64_t N, int64_t K, int64_t D);

struct Sm90Search {
  const void* x;                // [N, D] float32 / bfloat16
  const void* codebook;         // [K, D]
  ScalarKind dtype;
  const int32_t* labels;        // [N] in [-1, C), or nullptr (C == 0)
  const int32_t* offsets;       // [C + 1], or nullptr
  const int32_t* perm;          // [N] sorted position -> token (C > 0), or nullptr
  const int32_t* bucket_start;  // [C + 2] (C > 0)
  const int32_t* tile_start;    // [C + 2] (C > 0), tiles of kSm90TileM tokens
  int64_t N, D, K, C;
  int64_t* index;               // [N] out
  float* sqdist;                // [N] out
};

constexpr int kSm90TileM = 128;  // tokens per CTA: equal to the label scan's tile (nearest_code.cu)

// Centres and rounds x and the codes to bfloat16 (padded to a multiple of 64 features), computes
// the per-token margins, runs the wgmma search with per-token candidate lists, re-scores them in
// float32 and certifies; the tokens it cannot certify are searched exactly (a persistent kernel,
// one block per token, over the token's code range). No host synchronisation.
cudaError_t nearest_code_sm90_launch(const Sm90Search& s, int tiles, void* workspace, cudaStream_t stream);

}  // namespace sgcvq::gpu
