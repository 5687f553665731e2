// nearest_code on CUDA: a fused tiled search that never materialises the N x K distances.
//
// One block owns a tile of kBlockM tokens and a range of codes. Per code tile it computes the dot
// products S = X_tile . E_tile^T (tensor cores through WMMA, or FFMA), stores S to shared memory, and
// a fused epilogue (one thread per token) forms a_k = ||e_k||^2 - 2 x.e_k and keeps the token's R
// best (a, k) in registers. The expansion loses precision (cancellation, and the TF32 rounding of the
// inputs on the fast path), so the candidates are then re-scored with the direct fp32 sum of squared
// differences (float_load.cuh) and the result is *certified*: with B a rigorous bound on |a_k - (d_k
// - ||x||^2)|, every code that was not kept has fp32 distance >= (||x||^2 + a_R - B)(1 - gamma); if
// the best re-scored distance is below that, it is the fp32 argmin over the block's range, else the
// thread scans the range exactly (the fallback). So every path returns the argmin of the same fp32
// distances, ties to the lowest index.
//
// Paths (see nearest_code.h): float32 'exact' and 'exact_fp32' -> SimtCore (FFMA, fp32 products,
// R = 4); float32 'fast_exact' -> WmmaCore<float> (inputs rounded to TF32, R = 8); bfloat16 / float16
// in every mode -> WmmaCore<bf16 / fp16> (bf16 x bf16 and fp16 x fp16 products are exact in fp32, R = 8).
//
// Small N: the code range is split over gridDim.y blocks; each block certifies within its own range
// and the blocks merge with one 64-bit atomicMin per token on (distance bits << 32 | index). A
// non-negative float orders like its bit pattern read as an unsigned int, so the packed value orders
// by distance first and by index second: ties go to the lowest index whatever the block order.
//
// Labels: tokens are counting-sorted by class on the GPU (histogram, scan, scatter; bucket 0 holds
// label -1, which searches every code) and each tile holds tokens of one class only, searching that
// class's codes [offsets[c], offsets[c+1]). The grid is sized from the upper bound
// cdiv(N, kBlockM) + C + 1 of the number of tiles, so nothing waits for the host; surplus blocks exit.
//
// Not done yet (performance, unmeasured): no cp.async double buffering of the staged tiles, X is
// re-staged for every code tile, S makes a round trip through shared memory, no wgmma on sm_90a.
#include "nearest_code.h"
#include "label_tiles.cuh"
#include "../include/sgcvq/certificate.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_try.h"
#include "float_load.cuh"
#include "nearest_code_sm90.h"
#include "workspace.h"

namespace sgcvq::gpu {
namespace {

using namespace nvcuda;

constexpr int kThreads = 128;      // 4 warps; in the epilogue thread t owns token row t
constexpr int kBlockM = 128;       // tokens per tile
constexpr int kBlockN = 64;        // codes per tile
constexpr int kBlockK = 32;        // feature columns staged per step
// S is stored [token][code] with rows of 68 floats: a thread reads its token's row as float4s, and
// the 8 threads of each float4 phase hit 8 disjoint bank quads (row stride 68 = 4 mod 32).
constexpr int kLdS = kBlockN + 4;
constexpr int kScanThreads = 1024;
constexpr unsigned kFullMask = 0xffffffffu;

struct SearchArgs {
  const void* x;                  // [N, D]
  const void* codebook;           // [K, D]
  const int32_t* perm;            // [N] sorted position -> token, nullptr = identity
  const int32_t* offsets;         // [C + 1], nullptr when C == 0
  const int32_t* bucket_start;    // [C + 2] first sorted position of bucket b = label + 1
  const int32_t* tile_start;      // [C + 2] first tile of bucket b
  const float* norms;             // [K] fp32 ||e_k||^2
  const unsigned* max_norm_bits;  // [1] max_k ||e_k||^2, float bits
  unsigned long long* packed;     // [N] (distance bits << 32 | index), merged with atomicMin
  int N, D, K, C;
  bool vec;                       // D % kVec == 0 and 16-byte aligned rows: 16-byte loads
};

// ---- staging: kVec<T> consecutive elements of a row (16 bytes; zeros past D or the tile) ------
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // 4 floats or 8 bf16 / fp16

template <typename T>
__device__ __forceinline__ void fetch_vec(const T* src, int remaining, bool vec, T (&out)[kVec<T>]) {
  if (src == nullptr || remaining <= 0) {
#pragma unroll
    for (int i = 0; i < kVec<T>; ++i) out[i] = zero_value<T>();
    return;
  }
  if (vec) {  // remaining >= kVec here: D % kVec == 0 and columns start at multiples of kVec
    const uint4 v = *reinterpret_cast<const uint4*>(src);
    memcpy(out, &v, sizeof(v));
    return;
  }
#pragma unroll
  for (int i = 0; i < kVec<T>; ++i) out[i] = i < remaining ? src[i] : zero_value<T>();
}

// ---- the three ways of computing the S tile --------------------------------------------------
// Each core: Elem (the global element type), kTopR, Stage (shared staging, row-major or
// transposed), put_x / put_e (write kVec staged elements), zero / step / store (the accumulators), and
// dot_rel_error(D): a bound on |computed x.e - x.e| relative to sum_d |x_d e_d|.

// The tensor-core core through WMMA with fp32 accumulators: bfloat16 / float16 as m16n16k16,
// float32 rounded to TF32 as m16n16k8. They differ only in the operand
// (WmmaOperand below: the fragment's element type and K, and TF32's rounding while staged). Warp w
// computes rows [32w, 32w + 32) x all 64 codes: 2 x 4 fragments.
template <typename T>
struct WmmaOperand {  // bfloat16, float16: staged as they are
  using Frag = T;
  static constexpr int kFragK = 16;
  __device__ static T staged(T v) { return v; }
};
template <>
struct WmmaOperand<float> {  // float32: rounded to TF32 (cvt.rna) while staged
  using Frag = wmma::precision::tf32;
  static constexpr int kFragK = 8;
  __device__ static float staged(float v) { return wmma::__float_to_tf32(v); }
};

template <typename T>
struct WmmaCore {
  using Elem = T;
  using Op = WmmaOperand<T>;
  static constexpr int kTopR = 8;
  static constexpr int kFragK = Op::kFragK;
  // Rows padded by 16 bytes (80 bytes for 16-bit types, 144 for float): wmma needs ldm % 8 == 0
  // for 16-bit types and % 4 == 0 for float.
  static constexpr int kLdX = kBlockK + kVec<T>;
  struct Stage {
    T xs[kBlockM][kLdX];
    T es[kBlockN][kLdX];
  };
  // NOTE: products of two bf16 (or two fp16) values are exact in fp32; only the accumulation rounds.
  // The tensor core's internal fp32 accumulation order and rounding are not documented, so allow 16x
  // the bound of a sequential fp32 sum. TF32: round-to-nearest to 10 explicit mantissa bits moves
  // each input by <= 2^-11 relative, so each product by <= 2^-10 + 2^-22, plus the same
  // accumulation bound.
  __device__ static double dot_rel_error(int D) {
    if constexpr (std::is_same_v<T, float>) return 0x1.04p-10 + (D + 32) * 0x1p-20;
    else return (D + 32) * 0x1p-20;
  }

  wmma::fragment<wmma::accumulator, 16, 16, kFragK, float> acc[2][4];

  // kVec<T> elements (16 bytes) at a column multiple of kVec<T>: 16-byte aligned.
  __device__ static void put(T (&dst)[kLdX], int col, const T (&v)[kVec<T>]) {
    T r[kVec<T>];
#pragma unroll
    for (int i = 0; i < kVec<T>; ++i) r[i] = Op::staged(v[i]);
    uint4 raw;
    memcpy(&raw, r, sizeof(raw));
    *reinterpret_cast<uint4*>(&dst[col]) = raw;
  }
  __device__ static void put_x(Stage& st, int row, int col, const T (&v)[kVec<T>]) { put(st.xs[row], col, v); }
  __device__ static void put_e(Stage& st, int row, int col, const T (&v)[kVec<T>]) { put(st.es[row], col, v); }
  __device__ void zero() {
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) wmma::fill_fragment(acc[r][c], 0.f);
  }
  __device__ void step(const Stage& st, int tid) {
    const int warp = tid / 32;
#pragma unroll
    for (int kk = 0; kk < kBlockK; kk += kFragK) {
      wmma::fragment<wmma::matrix_a, 16, 16, kFragK, typename Op::Frag, wmma::row_major> a[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) wmma::load_matrix_sync(a[r], &st.xs[warp * 32 + r * 16][kk], kLdX);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        // B = E_tile^T: element (kk, code) sits at es[code][kk], i.e. column-major.
        wmma::fragment<wmma::matrix_b, 16, 16, kFragK, typename Op::Frag, wmma::col_major> b;
        wmma::load_matrix_sync(b, &st.es[c * 16][kk], kLdX);
#pragma unroll
        for (int r = 0; r < 2; ++r) wmma::mma_sync(acc[r][c], a[r], b, acc[r][c]);
      }
    }
  }
  __device__ void store(float* s, int tid) {
    const int warp = tid / 32;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c)
        wmma::store_matrix_sync(s + (warp * 32 + r * 16) * kLdS + c * 16, acc[r][c], kLdS, wmma::mem_row_major);
  }
};

// float32 with FFMA: thread (tx, ty) = (tid % 8, tid / 8) computes tokens [8 ty, 8 ty + 8) x codes
// [8 tx, 8 tx + 8) in registers. Staged transposed ([column][row]) so both operands are read as
// float4 along the rows.
struct SimtCore {
  using Elem = float;
  static constexpr int kTopR = 4;
  struct Stage {
    float xs[kBlockK][kBlockM + 4];
    float es[kBlockK][kBlockN + 4];
  };
  // NOTE: a sequential fp32 fma chain over D terms: relative error <= D u / (1 - D u), u = 2^-24.
  __device__ static double dot_rel_error(int D) { return cert::sum_error(D); }

  float acc[8][8];

  __device__ static void put_x(Stage& st, int row, int col, const float (&v)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) st.xs[col + i][row] = v[i];
  }
  __device__ static void put_e(Stage& st, int row, int col, const float (&v)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) st.es[col + i][row] = v[i];
  }
  __device__ void zero() {
#pragma unroll
    for (int r = 0; r < 8; ++r)
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[r][c] = 0.f;
  }
  __device__ void step(const Stage& st, int tid) {
    const int tx = tid % 8, ty = tid / 8;
#pragma unroll 4
    for (int kk = 0; kk < kBlockK; ++kk) {
      const float4 a0 = *reinterpret_cast<const float4*>(&st.xs[kk][ty * 8]);
      const float4 a1 = *reinterpret_cast<const float4*>(&st.xs[kk][ty * 8 + 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&st.es[kk][tx * 8]);
      const float4 b1 = *reinterpret_cast<const float4*>(&st.es[kk][tx * 8 + 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int r = 0; r < 8; ++r)
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
    }
  }
  __device__ void store(float* s, int tid) {
    const int tx = tid % 8, ty = tid / 8;
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      float* row = s + (ty * 8 + r) * kLdS + tx * 8;
      *reinterpret_cast<float4*>(row) = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
      *reinterpret_cast<float4*>(row + 4) = make_float4(acc[r][4], acc[r][5], acc[r][6], acc[r][7]);
    }
  }
};

template <class Core>
constexpr size_t kSmemUnionBytes = sizeof(typename Core::Stage) > sizeof(float) * kBlockM * kLdS
                                       ? sizeof(typename Core::Stage)
                                       : sizeof(float) * kBlockM * kLdS;

// Keeps the R smallest (a, k), sorted. Codes reach a thread in increasing index order and the
// bubbling uses a strict '<', so among equal a the lower index stays ahead. Fully unrolled: the
// arrays stay in registers.
template <int R>
__device__ __forceinline__ void top_insert(float (&v)[R], int (&i)[R], float nv, int ni) {
  v[R - 1] = nv;
  i[R - 1] = ni;
#pragma unroll
  for (int r = R - 1; r > 0; --r) {
    if (v[r] < v[r - 1]) {
      const float tv = v[r];
      v[r] = v[r - 1];
      v[r - 1] = tv;
      const int ti = i[r];
      i[r] = i[r - 1];
      i[r - 1] = ti;
    }
  }
}

template <class Core>
__global__ void __launch_bounds__(kThreads) nearest_code_tile_kernel(const SearchArgs args) {
  using T = typename Core::Elem;
  constexpr int R = Core::kTopR;
  // The staging buffers and the S tile are never live at the same time: one shared buffer.
  __shared__ __align__(128) unsigned char smem_raw[kSmemUnionBytes<Core>];
  __shared__ __align__(16) float tile_norm[kBlockN];
  auto& stage = *reinterpret_cast<typename Core::Stage*>(smem_raw);
  float* s_tile = reinterpret_cast<float*>(smem_raw);  // [kBlockM][kLdS]

  const T* __restrict__ x = static_cast<const T*>(args.x);
  const T* __restrict__ E = static_cast<const T*>(args.codebook);
  const int tid = threadIdx.x;
  const int D = args.D;

  // ---- this block's tokens (sorted positions [p0, p0 + rows)) and code range ------------------
  TileWork w;
  if (!label_tile_work(blockIdx.x, kBlockM, args.N, args.K, args.C, args.offsets, args.bucket_start,
                       args.tile_start, w))
    return;  // the grid is an upper bound
  const int p0 = w.p0, p_end = w.p_end, lo = w.lo, hi = w.hi;
  const long long span = hi - lo;
  const int k_begin = lo + static_cast<int>(span * blockIdx.y / gridDim.y);
  const int k_end = lo + static_cast<int>(span * (blockIdx.y + 1) / gridDim.y);
  if (k_begin >= k_end) return;  // uniform over the block: before any __syncthreads
  const int rows = p_end - p0;

  float best_v[R];
  int best_i[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    best_v[r] = __int_as_float(0x7f800000);  // +inf
    best_i[r] = -1;
  }

  Core core;
  // Staging map: thread tid moves the kVec elements at column col of rows row0 + i * kRowStep.
  constexpr int kV = kVec<T>;
  constexpr int kVecsPerRow = kBlockK / kV;
  constexpr int kRowStep = kThreads / kVecsPerRow;
  const int col = (tid % kVecsPerRow) * kV;
  const int row0 = tid / kVecsPerRow;
  // Offsets of this thread's token rows, fixed for the whole block (-1: past the tile's tokens).
  int64_t x_off[kBlockM / kRowStep];
#pragma unroll
  for (int i = 0; i < kBlockM / kRowStep; ++i) {
    const int row = row0 + i * kRowStep;
    x_off[i] = -1;
    if (row < rows) x_off[i] = static_cast<int64_t>(args.perm ? args.perm[p0 + row] : p0 + row) * D;
  }
  for (int k0 = k_begin; k0 < k_end; k0 += kBlockN) {
    const int codes = min(kBlockN, k_end - k0);
    core.zero();
    for (int d0 = 0; d0 < D; d0 += kBlockK) {
      __syncthreads();  // the previous step's reads (or the previous epilogue's) are done
#pragma unroll
      for (int i = 0; i < kBlockM / kRowStep; ++i) {
        T v[kV];
        fetch_vec(x_off[i] >= 0 ? x + x_off[i] + d0 + col : nullptr, D - d0 - col, args.vec, v);
        Core::put_x(stage, row0 + i * kRowStep, col, v);
      }
#pragma unroll
      for (int i = 0; i < kBlockN / kRowStep; ++i) {
        const int row = row0 + i * kRowStep;
        T v[kV];
        fetch_vec(row < codes ? E + static_cast<int64_t>(k0 + row) * D + d0 + col : nullptr, D - d0 - col,
                  args.vec, v);
        Core::put_e(stage, row, col, v);
      }
      __syncthreads();
      core.step(stage, tid);
    }
    __syncthreads();  // staging reads done (and, with D == 0, the previous epilogue's reads)
    core.store(s_tile, tid);
    // Padding codes get norm +inf: their S entries are exact zeros, so a = +inf is never kept.
    if (tid < kBlockN) tile_norm[tid] = tid < codes ? args.norms[k0 + tid] : __int_as_float(0x7f800000);
    __syncthreads();
    // Fused epilogue: norm-add and running top-R of this thread's token, 4 codes per step; the
    // inserts go in increasing code order, which keeps the tie rule.
    if (tid < rows) {
      const float* s_row = s_tile + tid * kLdS;
#pragma unroll 4
      for (int j = 0; j < kBlockN; j += 4) {
        const float4 s4 = *reinterpret_cast<const float4*>(s_row + j);
        const float4 n4 = *reinterpret_cast<const float4*>(tile_norm + j);
        const float a0 = fmaf(-2.f, s4.x, n4.x), a1 = fmaf(-2.f, s4.y, n4.y);
        const float a2 = fmaf(-2.f, s4.z, n4.z), a3 = fmaf(-2.f, s4.w, n4.w);
        if (fminf(fminf(a0, a1), fminf(a2, a3)) < best_v[R - 1]) {
          if (a0 < best_v[R - 1]) top_insert<R>(best_v, best_i, a0, k0 + j);
          if (a1 < best_v[R - 1]) top_insert<R>(best_v, best_i, a1, k0 + j + 1);
          if (a2 < best_v[R - 1]) top_insert<R>(best_v, best_i, a2, k0 + j + 2);
          if (a3 < best_v[R - 1]) top_insert<R>(best_v, best_i, a3, k0 + j + 3);
        }
      }
    }
  }
  if (tid >= rows) return;  // no __syncthreads below

  // ---- re-score the candidates in fp32 and certify them -------------------------------------
  const int tok = args.perm ? args.perm[p0 + tid] : p0 + tid;
  const T* xr = x + static_cast<int64_t>(tok) * D;
  float xx = 0.f;
  for (int d = 0; d < D; ++d) {
    const float v = to_float(xr[d]);
    xx = fmaf(v, v, xx);
  }
  float best = __int_as_float(0x7f800000);
  int bi = -1;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int k = best_i[r];
    if (k < 0) continue;
    const float f = direct_sqdist(xr, E + static_cast<int64_t>(k) * D, D);
    if (f < best || (f == best && k < bi)) {
      best = f;
      bi = k;
    }
  }
  // NOTE: the certificate. d_k = ||x||^2 + n_k - 2 x.e_k (exact), a_k its computed part, n the
  // norms. |a_k - (d_k - ||x||^2)| <= B with B from gamma (fp32 sums), the core's dot error rho,
  // ||e||_max and ||x||. A code k that was not kept has a_k >= a_R (the R-th kept value never
  // grows), so its fp32 distance f_k >= d_k (1 - gamma) >= (||x||^2 + a_R - B)(1 - gamma) =: L.
  // best < L strictly, so no such code is better, nor equal with a lower index. Computed in double
  // with a factor 2 of slack in B. a_R = +inf (the range had < R codes, all re-scored) gives L = +inf.
  // Assumes finite inputs whose squared norms fit in fp32 (sgcvq/ops.py checks finiteness).
  // (csrc/include/sgcvq/certificate.h: the bounds; docs/numerics.md: their derivation.)
  const double gamma = cert::sum_error(D);
  const double rho = Core::dot_rel_error(D);
  const double nmax = static_cast<double>(__uint_as_float(*args.max_norm_bits)) * (1.0 + gamma);
  const double xd = static_cast<double>(xx);
  const double bound = cert::tile_delta(gamma, rho, nmax, xd, D);
  const double lower = cert::unlisted_floor(xd, static_cast<double>(best_v[R - 1]), bound, gamma);
  const bool certified = static_cast<double>(best) < lower;
  if (!certified) {
    // Fallback: exact fp32 scan of this block's range for this token (rare: near-ties in the
    // low-precision scores, or non-finite inputs, which then report the range's first code).
    best = __int_as_float(0x7f800000);
    bi = -1;
    for (int k = k_begin; k < k_end; ++k) {
      const float f = direct_sqdist(xr, E + static_cast<int64_t>(k) * D, D);
      if (f < best) {
        best = f;
        bi = k;
      }
    }
    if (bi < 0) {
      bi = k_begin;
      best = direct_sqdist(xr, E + static_cast<int64_t>(k_begin) * D, D);
    }
  }
  const unsigned long long packed =
      (static_cast<unsigned long long>(__float_as_uint(best)) << 32) | static_cast<unsigned>(bi);
  atomicMin(args.packed + tok, packed);
}

// ---- small kernels ----------------------------------------------------------------------------

// norms[k] = ||e_k||^2 in fp32 (one warp per code) and the maximum over k, as float bits
// (non-negative floats order like their bit patterns, so an unsigned atomicMax is a float max).
template <typename T>
__global__ void code_norms_kernel(const T* __restrict__ E,  // [K, D]
                                  int K, int D,
                                  float* __restrict__ norms,  // [K]
                                  unsigned* __restrict__ max_norm_bits) {
  const int lane = threadIdx.x % 32;
  const int k = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  if (k >= K) return;  // whole warps exit together
  const T* row = E + static_cast<int64_t>(k) * D;
  float s = 0.f;
  for (int d = lane; d < D; d += 32) {
    const float v = to_float(row[d]);
    s = fmaf(v, v, s);
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(kFullMask, s, o);
  if (lane == 0) {
    norms[k] = s;
    atomicMax(max_norm_bits, __float_as_uint(s));
  }
}

// The warp-strided pass of the label kernels: whole warps step through the tokens together (so
// every lane takes part in __match_any_sync), and fn(i, b, peers, lane) sees token i's bucket
// b = labels[i] + 1 (-1 for lanes past N) and the lanes of its warp in the same bucket.
template <class Fn>
__device__ __forceinline__ void for_each_bucket_group(const int32_t* __restrict__ labels, int N, Fn fn) {
  const int lane = threadIdx.x % 32;
  const int stride = gridDim.x * blockDim.x;
  for (int base = blockIdx.x * blockDim.x + (threadIdx.x - lane); base < N; base += stride) {
    const int i = base + lane;
    const int b = i < N ? labels[i] + 1 : -1;
    fn(i, b, __match_any_sync(kFullMask, b), lane);
  }
}

// Warp-aggregated: lanes with the same bucket add their count once.
__global__ void label_histogram_kernel(const int32_t* __restrict__ labels,  // [N] in [-1, C)
                                       int N, int* __restrict__ count) {     // [C + 1]
  for_each_bucket_group(labels, N, [&](int, int b, unsigned peers, int lane) {
    if (b >= 0 && (peers & ((1u << lane) - 1)) == 0) atomicAdd(count + b, __popc(peers));
  });
}

// Exclusive scans of the bucket sizes and of their tile counts (one block, any number of buckets).
__global__ void __launch_bounds__(kScanThreads)
label_scan_kernel(const int* __restrict__ count,   // [buckets]
                  int buckets,
                  int* __restrict__ bucket_start,  // [buckets + 1]
                  int* __restrict__ tile_start,    // [buckets + 1]
                  int* __restrict__ cursor) {      // [buckets]
  using Scan = cub::BlockScan<int, kScanThreads>;
  __shared__ typename Scan::TempStorage tmp;
  int carry_n = 0, carry_t = 0;
  for (int base = 0; base < buckets; base += kScanThreads) {
    const int b = base + static_cast<int>(threadIdx.x);
    const int n = b < buckets ? count[b] : 0;
    const int t = (n + kBlockM - 1) / kBlockM;
    int sn, st, total_n, total_t;
    Scan(tmp).ExclusiveSum(n, sn, total_n);
    __syncthreads();
    Scan(tmp).ExclusiveSum(t, st, total_t);
    __syncthreads();
    if (b < buckets) {
      bucket_start[b] = carry_n + sn;
      cursor[b] = carry_n + sn;
      tile_start[b] = carry_t + st;
    }
    carry_n += total_n;
    carry_t += total_t;
  }
  if (threadIdx.x == 0) {
    bucket_start[buckets] = carry_n;
    tile_start[buckets] = carry_t;
  }
}

// perm[pos] = token, grouped by bucket. Order inside a bucket is whatever the atomics give: each
// token's result does not depend on it.
__global__ void label_scatter_kernel(const int32_t* __restrict__ labels,  // [N]
                                     int N, int* __restrict__ cursor,     // [C + 1]
                                     int32_t* __restrict__ perm) {        // [N]
  for_each_bucket_group(labels, N, [&](int i, int b, unsigned peers, int lane) {
    const int leader = __ffs(peers) - 1;
    int start = 0;
    if (b >= 0 && lane == leader) start = atomicAdd(cursor + b, __popc(peers));
    start = __shfl_sync(kFullMask, start, leader);
    if (b >= 0) perm[start + __popc(peers & ((1u << lane) - 1))] = i;
  });
}

__global__ void unpack_kernel(const unsigned long long* __restrict__ packed,  // [N]
                              int N, int64_t* __restrict__ index,             // [N]
                              float* __restrict__ sqdist) {                   // [N]
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N) return;
  const unsigned long long v = packed[i];
  index[i] = static_cast<int64_t>(v & 0xffffffffull);
  sqdist[i] = __uint_as_float(static_cast<unsigned>(v >> 32));
}

// ---- workspace layout ---------------------------------------------------------------------------
struct Layout {
  size_t norms, max_norm, packed, count, bucket_start, tile_start, cursor, perm, total;
};

Layout layout(int64_t N, int64_t K, int64_t C) {
  Layout l{};
  WorkspaceCarver w;
  l.norms = w.take(sizeof(float) * K);
  l.max_norm = w.take(sizeof(unsigned));
  l.packed = w.take(sizeof(unsigned long long) * N);
  if (C > 0) {
    l.count = w.take(sizeof(int) * (C + 1));
    l.bucket_start = w.take(sizeof(int) * (C + 2));
    l.tile_start = w.take(sizeof(int) * (C + 2));
    l.cursor = w.take(sizeof(int) * (C + 1));
    l.perm = w.take(sizeof(int32_t) * N);
  }
  l.total = w.total;
  return l;
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
cudaError_t launch_norms(const void* codebook, int K, int D, float* norms, unsigned* max_bits,
                         cudaStream_t stream) {
  constexpr int kWarps = 8;
  code_norms_kernel<T><<<static_cast<unsigned>(cdiv(K, kWarps)), kWarps * 32, 0, stream>>>(
      static_cast<const T*>(codebook), K, D, norms, max_bits);
  return cudaGetLastError();
}

template <class Core>
cudaError_t launch_search(const SearchArgs& args, dim3 grid, cudaStream_t stream) {
  nearest_code_tile_kernel<Core><<<grid, kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

bool nearest_code_uses_sm90(ScalarKind dtype, int64_t D, SearchMode mode, bool want_sm90) {
  return want_sm90 && mode == SearchMode::kFastest && sm90_search_supported(dtype, D);
}

size_t nearest_code_workspace_bytes(int64_t N, int64_t K, int64_t C, int64_t D, bool sm90) {
  return layout(N, K, C).total + (sm90 ? sm90_workspace_bytes(N, K, D) : 0);
}

cudaError_t nearest_code_launch(const void* x, const void* codebook, ScalarKind dtype,
                                const int32_t* labels, const int32_t* offsets, int64_t N, int64_t D,
                                int64_t K, int64_t C, SearchMode mode, bool sm90, void* workspace, int64_t* index,
                                float* sqdist, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  // 32-bit token and code indices inside the kernels (and in the packed atomic's low word).
  if (N > INT_MAX || K > INT_MAX || D > INT_MAX || C + 2 > INT_MAX || K <= 0) return cudaErrorInvalidValue;
  if ((labels == nullptr) != (C == 0) || (offsets == nullptr) != (C == 0)) return cudaErrorInvalidValue;
  const Layout l = layout(N, K, C);
  char* ws = static_cast<char*>(workspace);
  float* norms = reinterpret_cast<float*>(ws + l.norms);
  unsigned* max_bits = reinterpret_cast<unsigned*>(ws + l.max_norm);
  unsigned long long* packed = reinterpret_cast<unsigned long long*>(ws + l.packed);
  const int n = static_cast<int>(N), k = static_cast<int>(K), d = static_cast<int>(D);
  const int c = static_cast<int>(C);

  SGCVQ_CUDA_TRY(cudaMemsetAsync(max_bits, 0, sizeof(unsigned), stream));
  SGCVQ_CUDA_TRY(cudaMemsetAsync(packed, 0xff, sizeof(unsigned long long) * N, stream));
  switch (dtype) {
    case ScalarKind::kFloat32: SGCVQ_CUDA_TRY(launch_norms<float>(codebook, k, d, norms, max_bits, stream)); break;
    case ScalarKind::kBFloat16: SGCVQ_CUDA_TRY(launch_norms<__nv_bfloat16>(codebook, k, d, norms, max_bits, stream)); break;
    case ScalarKind::kFloat16: SGCVQ_CUDA_TRY(launch_norms<__half>(codebook, k, d, norms, max_bits, stream)); break;
    default: return cudaErrorInvalidValue;
  }

  SearchArgs args{};
  args.x = x;
  args.codebook = codebook;
  args.norms = norms;
  args.max_norm_bits = max_bits;
  args.packed = packed;
  args.N = n;
  args.D = d;
  args.K = k;
  args.C = c;
  // 16-byte loads when every row starts 16-byte aligned (4 floats or 8 bf16 / fp16 per load).
  const int64_t per_load = dtype == ScalarKind::kFloat32 ? 4 : 8;
  args.vec = D % per_load == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
             reinterpret_cast<uintptr_t>(codebook) % 16 == 0;

  int64_t tiles = cdiv(N, kBlockM);
  if (C > 0) {
    int* count = reinterpret_cast<int*>(ws + l.count);
    int* bucket_start = reinterpret_cast<int*>(ws + l.bucket_start);
    int* tile_start = reinterpret_cast<int*>(ws + l.tile_start);
    int* cursor = reinterpret_cast<int*>(ws + l.cursor);
    int32_t* perm = reinterpret_cast<int32_t*>(ws + l.perm);
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(cdiv(N, 256), 4096));
    SGCVQ_CUDA_TRY(cudaMemsetAsync(count, 0, sizeof(int) * (C + 1), stream));
    label_histogram_kernel<<<grid, 256, 0, stream>>>(labels, n, count);
    SGCVQ_CUDA_TRY(cudaGetLastError());
    label_scan_kernel<<<1, kScanThreads, 0, stream>>>(count, c + 1, bucket_start, tile_start, cursor);
    SGCVQ_CUDA_TRY(cudaGetLastError());
    label_scatter_kernel<<<grid, 256, 0, stream>>>(labels, n, cursor, perm);
    SGCVQ_CUDA_TRY(cudaGetLastError());
    args.perm = perm;
    args.offsets = offsets;
    args.bucket_start = bucket_start;
    args.tile_start = tile_start;
    tiles = cdiv(N, kBlockM) + C + 1;  // upper bound of sum_b cdiv(n_b, kBlockM): no host sync
  }

  if (sm90) {
    // The opt-in Hopper kernel (nearest_code_sm90.cu): its own prologue, search and fallback,
    // after the label sort above (its tiles are kBlockM = kSm90TileM tokens too).
    static_assert(kSm90TileM == kBlockM, "the sm90 search reads the label scan's tiles");
    Sm90Search s{};
    s.x = x;
    s.codebook = codebook;
    s.dtype = dtype;
    s.labels = labels;
    s.offsets = offsets;
    s.perm = args.perm;
    s.bucket_start = args.bucket_start;
    s.tile_start = args.tile_start;
    s.N = N;
    s.D = D;
    s.K = K;
    s.C = C;
    s.index = index;
    s.sqdist = sqdist;
    return nearest_code_sm90_launch(s, static_cast<int>(tiles), ws + l.total, stream);
  }

  // Few token tiles: split the codes too, so that about two blocks per SM have work.
  int device = 0, sms = 0;
  SGCVQ_CUDA_TRY(cudaGetDevice(&device));
  SGCVQ_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t real_tiles = cdiv(N, kBlockM);
  const int64_t want = 2LL * sms;
  int64_t splits = 1;
  if (real_tiles < want) splits = std::max<int64_t>(1, std::min(cdiv(want, real_tiles), K / (2 * kBlockN)));
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(splits));

  if (dtype == ScalarKind::kFloat32) {
    if (mode == SearchMode::kLowPrecision) SGCVQ_CUDA_TRY(launch_search<WmmaCore<float>>(args, grid, stream));
    else SGCVQ_CUDA_TRY(launch_search<SimtCore>(args, grid, stream));
  } else if (dtype == ScalarKind::kBFloat16) {
    SGCVQ_CUDA_TRY(launch_search<WmmaCore<__nv_bfloat16>>(args, grid, stream));
  } else {
    SGCVQ_CUDA_TRY(launch_search<WmmaCore<__half>>(args, grid, stream));
  }
  unpack_kernel<<<static_cast<unsigned>(cdiv(N, 256)), 256, 0, stream>>>(packed, n, index, sqdist);
  return cudaGetLastError();
}

}  // namespace sgcvq::gpu
