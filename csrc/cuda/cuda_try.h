// SGCVQ_CUDA_TRY(expr): return the cudaError_t of expr from the enclosing launcher if it failed.
// The launchers call it on every runtime call and on cudaGetLastError() after every launch.
#pragma once
#include <cuda_runtime.h>

#define SGCVQ_CUDA_TRY(expr)                          \
  do {                                                \
    const cudaError_t sgcvq_err_ = (expr);            \
    if (sgcvq_err_ != cudaSuccess) return sgcvq_err_; \
  } while (0)
