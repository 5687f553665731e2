// The element type of a float tensor handed to the CUDA launchers. The launcher headers include
// only CUDA headers, so they cannot name at::ScalarType; the torch glue (ops_cuda.cpp) maps it.
#pragma once

namespace sgcvq::gpu {

enum class ScalarKind : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

}  // namespace sgcvq::gpu
