// The tokens x [N, D] of any supported dtype, read row by row as float32 (the pipeline's stages
// are written once, for float32 rows; only this conversion depends on the dtype).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace sgcvq {
namespace cpu {

struct TokenRows {
  const void* data = nullptr;  // x, contiguous [N, D]
  int64_t D = 0;
  int64_t row_bytes = 0;
  const float* f32 = nullptr;  // x itself when it is float32, else null
  void (*convert)(const void* x, int64_t row, int64_t D, float scale, float* out) = nullptr;

  // out[d] = scale * x[row, d] (scale a power of two: exact).
  void load(int64_t row, float scale, float* out) const { convert(data, row, D, scale, out); }
  // Row i as float32: in place for float32 input, else converted into buf.
  const float* row(int64_t i, float* buf) const {
    if (f32 != nullptr) return f32 + i * D;
    load(i, 1.f, buf);
    return buf;
  }
  // The label-sorted gather reads x's rows in random order, each a cache miss: prefetching a row
  // a few tokens ahead hides them (13% of the grouped search at D = 64 went to this copy).
  void prefetch(int64_t row) const {
    const char* p = static_cast<const char*>(data) + row * row_bytes;
    for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(p + b);
  }
};
constexpr int64_t kGatherAhead = 8;  // rows prefetched ahead of the gather

template <typename scalar_t>
void convert_row(const void* x, int64_t row, int64_t D, float scale, float* out) {
  const scalar_t* src = static_cast<const scalar_t*>(x) + row * D;
  for (int64_t d = 0; d < D; ++d) out[d] = scale * static_cast<float>(src[d]);
}

// x: contiguous [N, D] float32, bfloat16 or float16 (the caller keeps it alive).
inline TokenRows token_rows(const at::Tensor& x) {
  TokenRows r;
  r.data = x.data_ptr();
  r.D = x.size(1);
  r.row_bytes = r.D * static_cast<int64_t>(x.element_size());
  switch (x.scalar_type()) {
    case at::kFloat:
      r.convert = convert_row<float>;
      r.f32 = x.data_ptr<float>();
      break;
    case at::kBFloat16: r.convert = convert_row<c10::BFloat16>; break;
    case at::kHalf: r.convert = convert_row<c10::Half>; break;
    default: TORCH_CHECK(false, "nearest_code: x must be float32, bfloat16 or float16, got ", x.scalar_type());
  }
  return r;
}

}  // namespace cpu
}  // namespace sgcvq
