// cluster_stats on CUDA: counts[k] and sums[k] of the tokens whose index is k, float32 accumulation.
//
// Atomic mode: a warp takes 32 tokens; __match_any_sync groups the lanes holding the same index, and
// each group adds its rows once (the warp sums the group's rows in lane order, lanes over D), so a
// run of equal indices (common: neighbouring tokens share a code) costs one atomic per column
// instead of one per token. On sm_90 the adds are float4 atomics when rows allow it.
//
// Deterministic mode: a stable radix sort (cub) of (index, token) puts each code's tokens in one
// segment, in token order. The sorted sequence is cut into pieces of kPiece positions; one warp per
// piece sums each of its segments in token order. A segment wholly inside a piece is written
// straight to sums[k] (one writer); a segment crossing a piece boundary leaves per-piece partials
// (head: the piece's first segment, tail: its last) that a second kernel adds in piece order. The
// order of every addition depends on N and the data only, so the sums are bit-identical run to run
// (the same scheme as csrc/cpu/cluster_stats_cpu.cpp).
#include "cluster_stats.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "cuda_try.h"
#include "float_load.cuh"
#include "workspace.h"

namespace sgcvq::gpu {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int kPiece = 64;  // sorted positions per warp in the deterministic mode (N / 64 warps)

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
__global__ void __launch_bounds__(kThreads)
cluster_stats_atomic_kernel(const int64_t* __restrict__ index,  // [N] in [0, K)
                            const T* __restrict__ x,            // [N, D]
                            int N, int D,
                            float* __restrict__ counts,         // [K], zeroed
                            float* __restrict__ sums,           // [K, D], zeroed
                            bool vec4) {
  const int lane = threadIdx.x % 32;
  const unsigned below = (1u << lane) - 1;
  const int stride = gridDim.x * blockDim.x;
  // Warp-uniform loop bounds: every lane runs the same iterations (full-mask warp intrinsics).
  for (int base = blockIdx.x * blockDim.x + (threadIdx.x - lane); base < N; base += stride) {
    const int i = base + lane;
    const int k = i < N ? static_cast<int>(index[i]) : -1;
    const unsigned peers = __match_any_sync(kFullMask, k);
    const bool leader = k >= 0 && (peers & below) == 0;
    // NOTE: counts are small integers, exact in float32 (below 2^24): their atomic order is harmless.
    if (leader) atomicAdd(counts + k, static_cast<float>(__popc(peers)));
    unsigned leaders = __ballot_sync(kFullMask, leader);
    while (leaders) {
      const int l = __ffs(leaders) - 1;
      leaders &= leaders - 1;
      const int kk = __shfl_sync(kFullMask, k, l);
      const unsigned group = __shfl_sync(kFullMask, peers, l);
      float* dst = sums + static_cast<int64_t>(kk) * D;
      if (vec4) {
        for (int d = lane * 4; d < D; d += 128) {
          float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
          for (unsigned m = group; m; m &= m - 1) {
            const int p = __ffs(m) - 1;
            const float4 v = load4(x + static_cast<int64_t>(base + p) * D + d);
            acc.x += v.x;
            acc.y += v.y;
            acc.z += v.z;
            acc.w += v.w;
          }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
          atomicAdd(reinterpret_cast<float4*>(dst + d), acc);  // one vector red per 4 columns
#else
          atomicAdd(dst + d, acc.x);
          atomicAdd(dst + d + 1, acc.y);
          atomicAdd(dst + d + 2, acc.z);
          atomicAdd(dst + d + 3, acc.w);
#endif
        }
      } else {
        for (int d = lane; d < D; d += 32) {
          float acc = 0.f;
          for (unsigned m = group; m; m &= m - 1) {
            const int p = __ffs(m) - 1;
            acc += to_float(x[static_cast<int64_t>(base + p) * D + d]);
          }
          atomicAdd(dst + d, acc);
        }
      }
    }
  }
}

__global__ void sort_input_kernel(const int64_t* __restrict__ index,  // [N]
                                  int N, int32_t* __restrict__ keys,  // [N]
                                  int32_t* __restrict__ tokens) {     // [N]
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N) return;
  keys[i] = static_cast<int32_t>(index[i]);
  tokens[i] = i;
}

__device__ __forceinline__ int lower_bound(const int32_t* __restrict__ keys, int n, int value) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (keys[mid] < value) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// start[k] = first sorted position of code k (start[K] = N); counts[k] = its segment length.
__global__ void segment_bounds_kernel(const int32_t* __restrict__ sorted_keys,  // [N]
                                      int N, int K,
                                      int* __restrict__ start,       // [K + 1]
                                      float* __restrict__ counts) {  // [K]
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k > K) return;
  const int lo = lower_bound(sorted_keys, N, k);
  start[k] = lo;
  if (k < K) counts[k] = static_cast<float>(lower_bound(sorted_keys, N, k + 1) - lo);
}

// One warp per piece of kPiece sorted positions; lanes over D; each segment summed in token order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
segment_piece_kernel(const int32_t* __restrict__ sorted_keys,    // [N]
                     const int32_t* __restrict__ sorted_tokens,  // [N]
                     const int* __restrict__ start,              // [K + 1]
                     const T* __restrict__ x,                    // [N, D]
                     int N, int D,
                     float* __restrict__ head,  // [pieces, D]: the piece's first segment, if it crosses
                     float* __restrict__ tail,  // [pieces, D]: the piece's last segment, if it crosses
                     float* __restrict__ sums) {  // [K, D]
  const int lane = threadIdx.x % 32;
  const int p = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int a = p * kPiece;
  if (a >= N) return;  // whole warps
  const int b = min(N, a + kPiece);
  for (int s = a; s < b;) {
    const int k = sorted_keys[s];
    const int seg_lo = start[k], seg_hi = start[k + 1];
    const int e = min(b, seg_hi);
    const bool crosses = seg_lo < a || seg_hi > b;
    float* dst = !crosses ? sums + static_cast<int64_t>(k) * D
                          : (s == a ? head : tail) + static_cast<int64_t>(p) * D;
    for (int d = lane; d < D; d += 32) {
      float acc = 0.f;
      for (int t = s; t < e; ++t) acc += to_float(x[static_cast<int64_t>(sorted_tokens[t]) * D + d]);
      dst[d] = acc;
    }
    s = e;
  }
}

// One warp per code whose segment spans several pieces: adds its partials in piece order.
__global__ void __launch_bounds__(kThreads)
segment_combine_kernel(const int* __restrict__ start,   // [K + 1]
                       int K, int D,
                       const float* __restrict__ head,  // [pieces, D]
                       const float* __restrict__ tail,  // [pieces, D]
                       float* __restrict__ sums) {      // [K, D]
  const int lane = threadIdx.x % 32;
  const int k = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  if (k >= K) return;
  const int lo = start[k], hi = start[k + 1];
  if (hi <= lo) return;
  const int pa = lo / kPiece, pb = (hi - 1) / kPiece;
  if (pa == pb) return;  // written directly by its piece
  for (int d = lane; d < D; d += 32) {
    float acc = 0.f;
    for (int p = pa; p <= pb; ++p) {
      // In its first piece the segment is the head only if it starts the piece.
      const float* src = (p == pa && lo != pa * kPiece) ? tail : head;
      acc += src[static_cast<int64_t>(p) * D + d];
    }
    sums[static_cast<int64_t>(k) * D + d] = acc;
  }
}

int key_bits(int64_t K) {
  int bits = 1;
  while (bits < 31 && (int64_t{1} << bits) < K) ++bits;
  return bits;
}

struct Layout {
  size_t keys_in, tokens_in, keys_out, tokens_out, start, head, tail, temp, temp_bytes, total;
};

Layout layout(int64_t N, int64_t D, int64_t K, bool deterministic) {
  Layout l{};
  if (!deterministic || N == 0) return l;
  WorkspaceCarver w;
  const int64_t pieces = cdiv(N, kPiece);
  l.keys_in = w.take(sizeof(int32_t) * N);
  l.tokens_in = w.take(sizeof(int32_t) * N);
  l.keys_out = w.take(sizeof(int32_t) * N);
  l.tokens_out = w.take(sizeof(int32_t) * N);
  l.start = w.take(sizeof(int) * (K + 1));
  l.head = w.take(sizeof(float) * pieces * D);
  l.tail = w.take(sizeof(float) * pieces * D);
  // cub's scratch size depends only on N and the key bits (a host computation, no sync).
  size_t temp_bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), static_cast<int>(N), 0, key_bits(K));
  l.temp_bytes = temp_bytes;
  l.temp = w.take(temp_bytes);
  l.total = w.total;
  return l;
}

template <typename T>
cudaError_t launch_atomic(const int64_t* index, const void* x, int N, int D, float* counts, float* sums,
                          cudaStream_t stream) {
  const bool vec4 = D % 4 == 0 && reinterpret_cast<uintptr_t>(x) % (4 * sizeof(T)) == 0 &&
                    reinterpret_cast<uintptr_t>(sums) % 16 == 0;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(cdiv(N, kThreads), 8192));
  cluster_stats_atomic_kernel<T><<<grid, kThreads, 0, stream>>>(index, static_cast<const T*>(x), N, D,
                                                                 counts, sums, vec4);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_sorted(const int64_t* index, const void* x, int N, int D, int K, const Layout& l,
                          char* ws, float* counts, float* sums, cudaStream_t stream) {
  int32_t* keys_in = reinterpret_cast<int32_t*>(ws + l.keys_in);
  int32_t* tokens_in = reinterpret_cast<int32_t*>(ws + l.tokens_in);
  int32_t* keys_out = reinterpret_cast<int32_t*>(ws + l.keys_out);
  int32_t* tokens_out = reinterpret_cast<int32_t*>(ws + l.tokens_out);
  int* start = reinterpret_cast<int*>(ws + l.start);
  float* head = reinterpret_cast<float*>(ws + l.head);
  float* tail = reinterpret_cast<float*>(ws + l.tail);
  sort_input_kernel<<<static_cast<unsigned>(cdiv(N, kThreads)), kThreads, 0, stream>>>(index, N, keys_in,
                                                                                      tokens_in);
  SGCVQ_CUDA_TRY(cudaGetLastError());
  size_t temp_bytes = l.temp_bytes;
  // LSD radix sort is stable: inside a segment the tokens stay in increasing token order.
  SGCVQ_CUDA_TRY(cub::DeviceRadixSort::SortPairs(ws + l.temp, temp_bytes, keys_in, keys_out, tokens_in,
                                                 tokens_out, N, 0, key_bits(K), stream));
  segment_bounds_kernel<<<static_cast<unsigned>(cdiv(int64_t{K} + 1, kThreads)), kThreads, 0, stream>>>(
      keys_out, N, K, start, counts);
  SGCVQ_CUDA_TRY(cudaGetLastError());
  const int64_t pieces = cdiv(N, kPiece);
  segment_piece_kernel<T><<<static_cast<unsigned>(cdiv(pieces, kWarpsPerBlock)), kThreads, 0, stream>>>(
      keys_out, tokens_out, start, static_cast<const T*>(x), N, D, head, tail, sums);
  SGCVQ_CUDA_TRY(cudaGetLastError());
  segment_combine_kernel<<<static_cast<unsigned>(cdiv(K, kWarpsPerBlock)), kThreads, 0, stream>>>(
      start, K, D, head, tail, sums);
  return cudaGetLastError();
}

}  // namespace

size_t cluster_stats_workspace_bytes(int64_t N, int64_t D, int64_t K, bool deterministic) {
  return layout(N, D, K, deterministic).total;
}

cudaError_t cluster_stats_launch(const int64_t* index, const void* x, ScalarKind dtype, int64_t N, int64_t D,
                                 int64_t K, bool deterministic, void* workspace, float* counts, float* sums,
                                 cudaStream_t stream) {
  if (K <= 0 || K > INT_MAX - 1 || N > INT_MAX || D > INT_MAX) return cudaErrorInvalidValue;
  SGCVQ_CUDA_TRY(cudaMemsetAsync(counts, 0, sizeof(float) * K, stream));
  SGCVQ_CUDA_TRY(cudaMemsetAsync(sums, 0, sizeof(float) * K * D, stream));
  if (N == 0) return cudaSuccess;
  const int n = static_cast<int>(N), d = static_cast<int>(D), k = static_cast<int>(K);
  if (!deterministic) {
    switch (dtype) {
      case ScalarKind::kFloat32: return launch_atomic<float>(index, x, n, d, counts, sums, stream);
      case ScalarKind::kBFloat16: return launch_atomic<__nv_bfloat16>(index, x, n, d, counts, sums, stream);
      case ScalarKind::kFloat16: return launch_atomic<__half>(index, x, n, d, counts, sums, stream);
    }
    return cudaErrorInvalidValue;
  }
  const Layout l = layout(N, D, K, true);
  char* ws = static_cast<char*>(workspace);
  switch (dtype) {
    case ScalarKind::kFloat32: return launch_sorted<float>(index, x, n, d, k, l, ws, counts, sums, stream);
    case ScalarKind::kBFloat16:
      return launch_sorted<__nv_bfloat16>(index, x, n, d, k, l, ws, counts, sums, stream);
    case ScalarKind::kFloat16: return launch_sorted<__half>(index, x, n, d, k, l, ws, counts, sums, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sgcvq::gpu
