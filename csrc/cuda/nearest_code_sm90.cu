// nearest_code on Hopper (sm_90a): wgmma bf16 candidates with a per-token margin list, float32
// re-score, certificate. Verified on an H100 (2026-11-28: every nearest_code test of
// tests/test_cuda.py; memcheck of it is still to run): the float32 default on sm_90 for D >= 16
// (sgcvq/gpu_dispatch.json). A change to the device code waits for a GPU to verify it again.
//
// Pipeline (one stream, no host synchronisation):
//  1. mu = the codebook mean (float32 inputs; bfloat16 inputs are not centred: their products are
//     exact and their rounding residual is zero). Codes and tokens are centred, rounded to
//     bfloat16 and padded with zeros to Dp = 64 ceil(D / 64) features (prep_rows_kernel, one warp
//     per row); per code ||e'||^2 and the residual ||e' - bf16(e')||^2 (their maxima by atomicMax
//     on the float bits), per token ||x'||^2 and the margin E of the certificate (the formula of
//     kernels/nearest_code.py `token_margin`, in double, rounded up).
//  2. search_kernel: a CTA of 2 warpgroups owns 128 tokens (one class with labels) and streams its
//     code range in tiles of 128 codes x 64 features through a 4-stage cp.async ring in shared
//     memory; the token tile stays resident. Each warpgroup issues wgmma.m64n128k16 (bf16 in, fp32
//     accumulators in registers) from shared-memory descriptors (no-swizzle K-major core
//     matrices). The epilogue of a code tile is one FMA per score (||e'||^2 - 2 x'.e') and a
//     compare: each thread keeps, per token row, 4 candidates within 2E of its best and the
//     smallest score it left out. After the last tile, each thread re-scores its candidates with
//     direct_sqdist (the float32 distance every CUDA path uses), the 4 threads of a row merge, and
//     the token is certified when best + E < (smallest excluded score) + ||x'||^2.
//  3. fallback_kernel: a persistent grid, one block per uncertified token, scans the token's code
//     range with direct_sqdist (exact; ties to the lowest index).
//
// Layout notes. A core matrix is 8 rows x 16 bytes (8 bf16), stored as 128 contiguous bytes; a
// [rows x 64] chunk holds them row-group major: element (r, k) at ((r/8)*8 + k/8)*64 + (r%8)*8 + k%8.
// For the K-major no-swizzle descriptor that is LBO = 128 B (next core matrix along K) and
// SBO = 1024 B (next 8-row group). The fp32 accumulator of m64nNk16: thread t of the warpgroup
// holds rows 16 (t/32) + (t%32)/4 and +8, columns 8i + 2 (t%4) + {0, 1}: d[4i + {0,1}] and
// d[4i + {2,3}].
#include "nearest_code_sm90.h"
#include "label_tiles.cuh"
#include "../include/sgcvq/certificate.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cuda_try.h"
#include "float_load.cuh"
#include "workspace.h"

// wgmma and setmaxnreg exist only in the arch-specific sm_90a target.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SGCVQ_SM90A 1
#else
#define SGCVQ_SM90A 0
#endif

namespace sgcvq::gpu {
namespace {

constexpr int kThreads = 256;  // 2 warpgroups
constexpr int kChunk = 64;     // features per pipeline stage
constexpr int kStages = 4;
constexpr int kMaxDp = 256;
constexpr int kChunkElems = kSm90TileM * kChunk;  // 128 rows x 64 features (also kTileN x 64)
constexpr unsigned kFull = 0xffffffffu;

__host__ __device__ constexpr int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// ---- prologue ------------------------------------------------------------------------------------
template <typename T>
__global__ void column_sum_kernel(const T* __restrict__ E, int K, int D, float* __restrict__ mu_sum) {
  // Block b sums rows [b * per, (b + 1) * per) for every feature d = threadIdx.x (+ 256 j).
  const int per = (K + gridDim.x - 1) / gridDim.x;
  const int k0 = blockIdx.x * per, k1 = min(K, k0 + per);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float s = 0.f;
    for (int k = k0; k < k1; ++k) s += to_float(E[static_cast<int64_t>(k) * D + d]);
    atomicAdd(mu_sum + d, s);
  }
}

struct Bound {
  unsigned max_n2;  // max_k fl||e'_k||^2, float bits
  unsigned max_r2;  // max_k fl||e'_k - bf16(e'_k)||^2, float bits
};

// One warp per row: centre (v - mu_sum[d] / K), round to bf16, pad to Dp; norms and residuals.
// Codes (margin == nullptr): norm2[k], atomicMax into bound. Tokens: norm2[i] = ||x'||^2 and
// margin[i] = E (reads bound, complete: the code launch precedes on the stream).
template <typename T>
__global__ void prep_rows_kernel(const T* __restrict__ src, int rows, int D, int Dp, int K,
                                 const float* __restrict__ mu_sum, __nv_bfloat16* __restrict__ out,
                                 float* __restrict__ norm2, Bound* bound, float* __restrict__ margin) {
  const int lane = threadIdx.x % 32;
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  if (row >= rows) return;
  const float inv_k = 1.f / static_cast<float>(K);
  float sq = 0.f, res = 0.f;
  for (int d = lane; d < Dp; d += 32) {
    float c = 0.f;
    if (d < D) c = to_float(src[static_cast<int64_t>(row) * D + d]) - mu_sum[d] * inv_k;
    const __nv_bfloat16 q = __float2bfloat16_rn(c);
    out[static_cast<int64_t>(row) * Dp + d] = q;
    const float t = c - __bfloat162float(q);  // exact
    sq = fmaf(c, c, sq);
    res = fmaf(t, t, res);
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    sq += __shfl_xor_sync(kFull, sq, o);
    res += __shfl_xor_sync(kFull, res, o);
  }
  if (lane != 0) return;
  norm2[row] = sq;
  if (margin == nullptr) {
    atomicMax(&bound->max_n2, __float_as_uint(sq));
    atomicMax(&bound->max_r2, __float_as_uint(res));
    return;
  }
  // NOTE: the certificate's margin (kernels/nearest_code.py token_margin, the same terms):
  // bf16 residuals by Cauchy-Schwarz, exact bf16 products, fp32 accumulation charged a full ulp a
  // step (g), the norms, the direct fp32 re-score, centring and the score arithmetic.
  const double g = cert::accumulation_error(D);
  const double xn = sqrt(static_cast<double>(sq) * (1.0 + g)) * 1.0001;
  const double r = sqrt(static_cast<double>(res) * (1.0 + g)) * 1.0001;
  const double me2 = static_cast<double>(__uint_as_float(bound->max_n2)) * (1.0 + g) * 1.0001;
  const double me = sqrt(me2);
  const double merr = sqrt(static_cast<double>(__uint_as_float(bound->max_r2)) * (1.0 + g)) * 1.0001;
  margin[row] = __double2float_ru(cert::centred_margin(xn, r, me2, me, merr, D, g, g));
}

// ---- the search (device code only in the sm_90a build) ----
#if SGCVQ_SM90A
constexpr int kTileN = 128;  // codes per tile (wgmma N)
constexpr int kList = 4;     // candidates per thread and token row (4 threads per row: 16)

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0: zero-fill, nothing read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Thread tid copies 4 of the 1024 16-byte pieces of a [128 rows x 64] chunk: piece p = tid + 256 i
// is row 8 (p / 64) + p % 8, features 8 ((p / 8) % 8) + [0, 8), and lands at element 8 p of the
// core-matrix layout (contiguous across a warp: no bank conflicts; 8 rows x 64 B per warp: full
// 32-byte sectors).
__device__ __forceinline__ void load_chunk(__nv_bfloat16* dst, const __nv_bfloat16* base, const int64_t (&row_off)[4],
                                           const bool (&row_ok)[4], int col0, int tid) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int p = tid + kThreads * i;
    const int kc = (p / 8) % 8;
    cp_async16(dst + 8 * p, row_ok[i] ? base + row_off[i] + col0 + 8 * kc : base, row_ok[i]);
  }
}

__device__ __forceinline__ uint64_t smem_desc(const void* p) {
  const uint64_t addr = static_cast<uint64_t>(__cvta_generic_to_shared(p));
  uint64_t desc = (addr & 0x3FFFF) >> 4;
  desc |= static_cast<uint64_t>(128 >> 4) << 16;   // LBO: next core matrix along K
  desc |= static_cast<uint64_t>(1024 >> 4) << 32;  // SBO: next 8-row group
  return desc;                                     // base offset 0, swizzle mode 0 (none)
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

// d[64] += A[64 x 16] . B[128 x 16]^T (both K-major bf16 in shared memory); scale_d = 0 overwrites.
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(scale_d));
}

// Per token row and thread: kList candidates (unsorted), their best, the smallest score left out.
struct RowList {
  float v[kList];
  int k[kList];
  float best, worst, excl, window;

  __device__ void init(float w) {
#pragma unroll
    for (int r = 0; r < kList; ++r) {
      v[r] = __int_as_float(0x7f800000);
      k[r] = -1;
    }
    best = worst = excl = __int_as_float(0x7f800000);
    window = w;
  }
  // Codes reach a thread in increasing index order; a code replaces the worst entry only when
  // strictly better, so among equal scores the lower index stays.
  __device__ __forceinline__ void offer(float s, int code) {
    if (!(s < fminf(worst, best + window))) {
      excl = fminf(excl, s);
      return;
    }
    excl = fminf(excl, worst);  // the evicted entry (inf while the list has room)
    bool done = false;
#pragma unroll
    for (int r = 0; r < kList; ++r) {
      if (!done && v[r] == worst) {
        v[r] = s;
        k[r] = code;
        done = true;
      }
    }
    best = fminf(best, s);
    worst = v[0];
#pragma unroll
    for (int r = 1; r < kList; ++r) worst = fmaxf(worst, v[r]);
  }
};

#endif

struct SearchParams {
  const void* x;                    // [N, D] original
  const void* codebook;             // [K, D] original
  const __nv_bfloat16* xb;          // [N, Dp] centred bf16
  const __nv_bfloat16* eb;          // [K, Dp]
  const float* enorm2;              // [K] fl||e'||^2
  const float* xx;                  // [N] fl||x'||^2
  const float* margin;              // [N] E
  const int32_t* perm;              // [N] or nullptr
  const int32_t* offsets;           // [C + 1] or nullptr
  const int32_t* bucket_start;      // [C + 2]
  const int32_t* tile_start;        // [C + 2]
  int64_t* index;                   // [N]
  float* sqdist;                    // [N]
  int* todo;                        // [N] uncertified tokens, *todo_count of them
  int* todo_count;
  int N, D, Dp, K, C;
};

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) search_kernel(const SearchParams p) {
#if SGCVQ_SM90A
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __nv_bfloat16* a_tile = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [Dp / 64][128 x 64]
  __nv_bfloat16* b_ring = a_tile + (p.Dp / kChunk) * kChunkElems;       // [kStages][128 x 64]
  const int tid = threadIdx.x;

  // ---- this CTA's tokens (sorted positions [p0, p0 + rows)) and code range [lo, hi) ----
  TileWork w;
  if (!label_tile_work(blockIdx.x, kSm90TileM, p.N, p.K, p.C, p.offsets, p.bucket_start, p.tile_start, w))
    return;  // the grid is an upper bound
  const int p0 = w.p0, p_end = w.p_end, lo = w.lo, hi = w.hi;
  const int rows = p_end - p0;
  if (rows <= 0 || hi <= lo) return;  // uniform over the CTA

  // ---- operand rows this thread copies: tokens (fixed) and codes (per tile) ----
  int64_t x_off[4];
  bool x_ok[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int piece = tid + kThreads * i;
    const int r = 8 * (piece / 64) + piece % 8;
    x_ok[i] = r < rows;
    const int tok = x_ok[i] ? (p.perm ? p.perm[p0 + r] : p0 + r) : 0;
    x_off[i] = static_cast<int64_t>(tok) * p.Dp;
  }
  const int n_chunks = p.Dp / kChunk;
  const int n_tiles = (hi - lo + kTileN - 1) / kTileN;
  const int total = n_tiles * n_chunks;
  auto load_b = [&](int it) {
    const int j = it / n_chunks, c = it % n_chunks;
    int64_t e_off[4];
    bool e_ok[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int piece = tid + kThreads * i;
      const int code = lo + j * kTileN + 8 * (piece / 64) + piece % 8;
      e_ok[i] = code < hi;
      e_off[i] = static_cast<int64_t>(e_ok[i] ? code : 0) * p.Dp;
    }
    load_chunk(b_ring + (it % kStages) * kChunkElems, p.eb, e_off, e_ok, c * kChunk, tid);
  };

  // Prologue: the whole token tile and the first kStages - 1 code chunks (group 0 holds both).
  for (int c = 0; c < n_chunks; ++c) load_chunk(a_tile + c * kChunkElems, p.xb, x_off, x_ok, c * kChunk, tid);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < total) load_b(s);
    cp_async_commit();  // always: the group count stays uniform
  }

  // ---- per-thread epilogue state: two token rows ----
  const int wg = tid / 128, t128 = tid % 128, warp = t128 / 32, lane = tid % 32;
  const int row_a = 64 * wg + 16 * warp + lane / 4;  // and row_a + 8
  const int cq = 2 * (lane % 4);
  RowList la, lb;
  {
    const bool oka = row_a < rows, okb = row_a + 8 < rows;
    const int ta = oka ? (p.perm ? p.perm[p0 + row_a] : p0 + row_a) : 0;
    const int tb = okb ? (p.perm ? p.perm[p0 + row_a + 8] : p0 + row_a + 8) : 0;
    la.init(oka ? 2.0625f * p.margin[ta] : 0.f);
    lb.init(okb ? 2.0625f * p.margin[tb] : 0.f);
  }
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;

  for (int it = 0; it < total; ++it) {
    cp_async_wait<kStages - 2>();  // this thread's pieces of chunk `it` have landed
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // visible to wgmma
    __syncthreads();  // everyone's pieces; everyone is done with chunk it - 1
    if (it + kStages - 1 < total) load_b(it + kStages - 1);
    cp_async_commit();
    const int j = it / n_chunks, c = it % n_chunks;
    const __nv_bfloat16* a = a_tile + c * kChunkElems + wg * 64 * kChunk;  // this warpgroup's 64 rows
    const __nv_bfloat16* b = b_ring + (it % kStages) * kChunkElems;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kChunk / 16; ++kk)  // 16 features = 2 core matrices = 256 bytes
      wgmma_m64n128k16(acc, smem_desc(a + kk * 128), smem_desc(b + kk * 128), (c > 0 || kk > 0) ? 1 : 0);
    wgmma_commit();
    wgmma_wait0();
    if (c == n_chunks - 1) {
      // Epilogue of code tile j: a = ||e'||^2 - 2 x'.e' (one FMA), then the lists.
      const int kb = lo + j * kTileN;
#pragma unroll
      for (int i = 0; i < kTileN / 8; ++i) {
        const int k0 = kb + 8 * i + cq;
        const float n0 = k0 < hi ? __ldg(p.enorm2 + k0) : __int_as_float(0x7f800000);
        const float n1 = k0 + 1 < hi ? __ldg(p.enorm2 + k0 + 1) : __int_as_float(0x7f800000);
        la.offer(fmaf(-2.f, acc[4 * i + 0], n0), k0);
        la.offer(fmaf(-2.f, acc[4 * i + 1], n1), k0 + 1);
        lb.offer(fmaf(-2.f, acc[4 * i + 2], n0), k0);
        lb.offer(fmaf(-2.f, acc[4 * i + 3], n1), k0 + 1);
      }
    }
  }
  cp_async_wait<0>();

  // ---- re-score in float32, merge the 4 threads of a row, certify ----
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ E = static_cast<const T*>(p.codebook);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const RowList& L = h == 0 ? la : lb;
    const int r = row_a + 8 * h;
    const bool ok = r < rows;
    const int tok = ok ? (p.perm ? p.perm[p0 + r] : p0 + r) : 0;
    float bd = __int_as_float(0x7f800000);
    int bi = INT_MAX;
    if (ok) {
      const T* xr = x + static_cast<int64_t>(tok) * p.D;
#pragma unroll
      for (int s = 0; s < kList; ++s) {
        if (L.k[s] < 0) continue;
        const float f = direct_sqdist(xr, E + static_cast<int64_t>(L.k[s]) * p.D, p.D);
        if (f < bd || (f == bd && L.k[s] < bi)) {
          bd = f;
          bi = L.k[s];
        }
      }
    }
    float excl = L.excl;
#pragma unroll
    for (int o = 1; o < 4; o *= 2) {  // the 4 threads of the row: lanes differing in bits 0-1
      const float obd = __shfl_xor_sync(kFull, bd, o);
      const int obi = __shfl_xor_sync(kFull, bi, o);
      excl = fminf(excl, __shfl_xor_sync(kFull, excl, o));
      if (obd < bd || (obd == bd && obi < bi)) {
        bd = obd;
        bi = obi;
      }
    }
    if (ok && lane % 4 == 0) {
      // Certified: a code outside every list has f >= a + ||x'||^2 - E >= excl + ||x'||^2 - E > bd.
      const bool certified = bi != INT_MAX && bd + p.margin[tok] < excl + p.xx[tok];
      p.index[tok] = bi == INT_MAX ? lo : bi;
      p.sqdist[tok] = bd;
      if (!certified) p.todo[atomicAdd(p.todo_count, 1)] = tok;
    }
  }
#else
  __trap();  // built without sm_90a: the host never launches this (sm90_search_applies)
#endif
}

// One block per uncertified token (a persistent grid): the exact float32 scan of its code range.
template <typename T>
__global__ void __launch_bounds__(256) fallback_kernel(const T* __restrict__ x, const T* __restrict__ E,
                                                       const int32_t* __restrict__ labels,
                                                       const int32_t* __restrict__ offsets, int K, int D,
                                                       const int* __restrict__ todo, const int* __restrict__ todo_count,
                                                       int64_t* __restrict__ index, float* __restrict__ sqdist) {
#if SGCVQ_SM90A  // only the sm90 path launches it (no sm_80 copy to keep)
  __shared__ float red_v[8];
  __shared__ int red_k[8];
  const int n = *todo_count;
  for (int t = blockIdx.x; t < n; t += gridDim.x) {
    const int tok = todo[t];
    int lo = 0, hi = K;
    if (labels != nullptr && labels[tok] >= 0) {
      lo = offsets[labels[tok]];
      hi = offsets[labels[tok] + 1];
    }
    const T* xr = x + static_cast<int64_t>(tok) * D;
    float best = __int_as_float(0x7f800000);
    int bi = INT_MAX;
    for (int k = lo + static_cast<int>(threadIdx.x); k < hi; k += blockDim.x) {
      const float f = direct_sqdist(xr, E + static_cast<int64_t>(k) * D, D);
      if (f < best) {  // increasing k per thread: strict keeps the lowest index
        best = f;
        bi = k;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
      const float ov = __shfl_xor_sync(kFull, best, o);
      const int ok = __shfl_xor_sync(kFull, bi, o);
      if (ov < best || (ov == best && ok < bi)) {
        best = ov;
        bi = ok;
      }
    }
    if (threadIdx.x % 32 == 0) {
      red_v[threadIdx.x / 32] = best;
      red_k[threadIdx.x / 32] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) {
        if (red_v[w] < best || (red_v[w] == best && red_k[w] < bi)) {
          best = red_v[w];
          bi = red_k[w];
        }
      }
      if (bi == INT_MAX) {  // non-finite distances everywhere: the range's first code
        bi = lo;
        best = direct_sqdist(xr, E + static_cast<int64_t>(lo) * D, D);
      }
      index[tok] = bi;
      sqdist[tok] = best;
    }
    __syncthreads();
  }
#else
  __trap();
#endif
}

struct Sm90Layout {
  size_t mu_sum, bound, todo_count, enorm2, xx, margin, todo, xb, eb, total;
};

Sm90Layout sm90_layout(int64_t N, int64_t K, int64_t D) {
  const int64_t Dp = round_up(D, kChunk);
  Sm90Layout l{};
  WorkspaceCarver w;
  l.mu_sum = w.take(sizeof(float) * Dp);
  l.bound = w.take(sizeof(Bound));
  l.todo_count = w.take(sizeof(int));
  l.enorm2 = w.take(sizeof(float) * K);
  l.xx = w.take(sizeof(float) * N);
  l.margin = w.take(sizeof(float) * N);
  l.todo = w.take(sizeof(int) * N);
  l.xb = w.take(sizeof(__nv_bfloat16) * N * Dp);
  l.eb = w.take(sizeof(__nv_bfloat16) * K * Dp);
  l.total = w.total;
  return l;
}

template <typename T>
cudaError_t launch_all(const Sm90Search& s, int tiles, void* workspace, cudaStream_t stream) {
  const Sm90Layout l = sm90_layout(s.N, s.K, s.D);
  char* ws = static_cast<char*>(workspace);
  float* mu_sum = reinterpret_cast<float*>(ws + l.mu_sum);
  Bound* bound = reinterpret_cast<Bound*>(ws + l.bound);
  int* todo_count = reinterpret_cast<int*>(ws + l.todo_count);
  const int N = static_cast<int>(s.N), K = static_cast<int>(s.K), D = static_cast<int>(s.D);
  const int Dp = static_cast<int>(round_up(D, kChunk));
  SearchParams p{};
  p.x = s.x;
  p.codebook = s.codebook;
  p.xb = reinterpret_cast<const __nv_bfloat16*>(ws + l.xb);
  p.eb = reinterpret_cast<const __nv_bfloat16*>(ws + l.eb);
  p.enorm2 = reinterpret_cast<const float*>(ws + l.enorm2);
  p.xx = reinterpret_cast<const float*>(ws + l.xx);
  p.margin = reinterpret_cast<const float*>(ws + l.margin);
  p.perm = s.perm;
  p.offsets = s.offsets;
  p.bucket_start = s.bucket_start;
  p.tile_start = s.tile_start;
  p.index = s.index;
  p.sqdist = s.sqdist;
  p.todo = reinterpret_cast<int*>(ws + l.todo);
  p.todo_count = todo_count;
  p.N = N;
  p.D = D;
  p.Dp = Dp;
  p.K = K;
  p.C = static_cast<int>(s.C);

  SGCVQ_CUDA_TRY(cudaMemsetAsync(mu_sum, 0, sizeof(float) * Dp, stream));
  SGCVQ_CUDA_TRY(cudaMemsetAsync(bound, 0, sizeof(Bound), stream));
  SGCVQ_CUDA_TRY(cudaMemsetAsync(todo_count, 0, sizeof(int), stream));
  const T* x = static_cast<const T*>(s.x);
  const T* E = static_cast<const T*>(s.codebook);
  // NOTE: float32 data is centred on the codebook mean; bfloat16 data is not (mu = 0): its own
  // values are bf16 already, so the candidates carry no rounding residual at all.
  if (s.dtype == ScalarKind::kFloat32) {
    column_sum_kernel<T><<<static_cast<unsigned>(std::min(1024, (K + 63) / 64)), 256, 0, stream>>>(E, K, D, mu_sum);
    SGCVQ_CUDA_TRY(cudaGetLastError());
  }
  constexpr int kRowsPerBlock = 8;  // one warp per row
  prep_rows_kernel<T><<<static_cast<unsigned>((K + kRowsPerBlock - 1) / kRowsPerBlock), 32 * kRowsPerBlock, 0, stream>>>(
      E, K, D, Dp, K, mu_sum, const_cast<__nv_bfloat16*>(p.eb), const_cast<float*>(p.enorm2), bound, nullptr);
  SGCVQ_CUDA_TRY(cudaGetLastError());
  prep_rows_kernel<T><<<static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock), 32 * kRowsPerBlock, 0, stream>>>(
      x, N, D, Dp, K, mu_sum, const_cast<__nv_bfloat16*>(p.xb), const_cast<float*>(p.xx), bound,
      const_cast<float*>(p.margin));
  SGCVQ_CUDA_TRY(cudaGetLastError());

  const size_t smem = sizeof(__nv_bfloat16) * (static_cast<size_t>(Dp / kChunk) + kStages) * kChunkElems;
  SGCVQ_CUDA_TRY(cudaFuncSetAttribute(search_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  search_kernel<T><<<static_cast<unsigned>(tiles), kThreads, smem, stream>>>(p);
  SGCVQ_CUDA_TRY(cudaGetLastError());

  int device = 0, sms = 0;
  SGCVQ_CUDA_TRY(cudaGetDevice(&device));
  SGCVQ_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  fallback_kernel<T><<<static_cast<unsigned>(2 * sms), 256, 0, stream>>>(
      x, E, s.labels, s.offsets, K, D, p.todo, todo_count, s.index, s.sqdist);
  return cudaGetLastError();
}

// 1 in the sm_90a build of the device code, 0 in any other (sm_90 without 'a', sm_80).
__device__ const int kDeviceHasSm90a = SGCVQ_SM90A;

bool built_with_sm90a() {
  static const bool has = [] {
    int v = 0;
    // One small copy, once per process: whether the loaded device code is the sm_90a build.
    if (cudaMemcpyFromSymbol(&v, kDeviceHasSm90a, sizeof(int)) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return v == 1;
  }();
  return has;
}

}  // namespace

bool sm90_search_supported(ScalarKind dtype, int64_t D) {
  if (dtype != ScalarKind::kFloat32 && dtype != ScalarKind::kBFloat16) return false;
  if (D < 16 || D > kMaxDp || D % 8 != 0) return false;
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) return false;
  return major == 9 && minor == 0 && built_with_sm90a();
}

size_t sm90_workspace_bytes(int64_t N, int64_t K, int64_t D) { return sm90_layout(N, K, D).total; }

cudaError_t nearest_code_sm90_launch(const Sm90Search& s, int tiles, void* workspace, cudaStream_t stream) {
  if (s.N == 0) return cudaSuccess;
  if (s.N > INT_MAX || s.K > INT_MAX || s.D > kMaxDp) return cudaErrorInvalidValue;
  if (s.dtype == ScalarKind::kFloat32) return launch_all<float>(s, tiles, workspace, stream);
  if (s.dtype == ScalarKind::kBFloat16) return launch_all<__nv_bfloat16>(s, tiles, workspace, stream);
  return cudaErrorNotSupported;
}

}  // namespace sgcvq::gpu
