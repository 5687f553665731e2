// The CUDA backend's environment, read once per process. sgcvq/options.py reads the same variables
// for Python callers and passes its choice per call (the op nearest_code_kernel); these values
// serve the plain op torch.ops.sgcvq.nearest_code, i.e. C++ callers and the CMake library.
//   SGCVQ_CUDA_SM90=1  the plain op's mode "exact" takes the Hopper kernel (nearest_code_sm90.h)
//                      where it applies; unset or 0: the generic kernel (nearest_code.cu).
#pragma once

namespace sgcvq::gpu {

struct CudaOptions {
  bool sm90 = false;
};

// Parsed on the first call; an unrecognised value raises (through the caller's TORCH_CHECK).
const CudaOptions& cuda_options();

// Non-empty when the environment held a value cuda_options() could not parse: the message.
const char* cuda_options_error();

}  // namespace sgcvq::gpu
