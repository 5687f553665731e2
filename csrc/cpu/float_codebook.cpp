// The float32 codebook of the top-2 collectors and the exact search (collector.h).
#include "collector.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace sgcvq {
namespace cpu {

FloatCodebook prepare_float_codebook(const at::Tensor& E, bool small_layout) {
  FloatCodebook cb;
  cb.E = E;
  cb.codes = E.data_ptr<float>();
  cb.K = E.size(0);
  cb.D = E.size(1);
  const int64_t K = cb.K, D = cb.D;
  const float* ep = cb.codes;
  // ||e_k||^2 in float32 (any summation order is within the certificate's g); for the small-D
  // layout padded to whole 16-code blocks (zero norms past K: the layout's pad codes).
  const int64_t nblocks = (K + kLanes - 1) / kLanes;
  cb.norms.assign(static_cast<size_t>(small_layout ? nblocks * kLanes : K), 0.f);
  at::parallel_for(0, K, 2048, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) cb.norms[static_cast<size_t>(k)] = sum_squares(ep + k * D, D);
  });
  cb.max_norm2 = *std::max_element(cb.norms.begin(), cb.norms.begin() + K);
  if (small_layout) {
    // Blocks of 16 codes, each [D][16] (codes along the vector lanes), zero past K.
    cb.blocks.assign(static_cast<size_t>(nblocks * kLanes * D), 0.f);
    at::parallel_for(0, K, 2048, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t d = 0; d < D; ++d)
          cb.blocks[static_cast<size_t>(((k / kLanes) * D + d) * kLanes + k % kLanes)] = ep[k * D + d];
    });
  }
  return cb;
}

}  // namespace cpu
}  // namespace sgcvq
