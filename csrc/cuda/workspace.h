// One device workspace carved into regions: a launcher lays out its scratch once (the glue
// allocates layout.total bytes, nearest_code_workspace_bytes) and finds each region again at
// launch. Host code, plain C++: the .cu files include only CUDA headers.
#pragma once
#include <cstddef>

namespace sgcvq::gpu {

// Regions start 256 bytes apart at least: cudaMalloc's own alignment, so every region is aligned
// for any vector load and for cub's scratch.
struct WorkspaceCarver {
  size_t total = 0;
  // The offset of a new region of `bytes`.
  size_t take(size_t bytes) {
    const size_t here = total;
    total += (bytes + 255) & ~static_cast<size_t>(255);
    return here;
  }
};

}  // namespace sgcvq::gpu
