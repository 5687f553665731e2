// The int16 candidate search for AVX2 CPUs (see int16_search_avx2.h).
//
// Tiles: 6 token rows x 16 codes in twelve int32 accumulators (vpmaddwd + vpaddd per feature
// pair, the A pair broadcast from memory, two code vectors loaded), the 16-code blocks of a tile
// of codes (L2-sized) streamed once per 6 rows; the epilogue turns each block into approximate
// distances (one conversion, one multiply by s_k, one FMA with -2 s_x and the norm) straight into
// a 6-row strip in L1 and keeps each row's minimum, so the candidate scan is one pass with a
// compare and a rarely taken branch per 8 codes.
//
// The kernels are compiled for AVX2 + FMA by the pragma below (after every include), never by
// flags for the whole library; only avx2_kernels_on() callers reach them.
#include "int16_search_avx2.h"

#include "../nearest_code_scan.h"
#include "cpu_kind.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace sgcvq {
namespace cpu {

int32_t int16_q_max(int64_t Dp) {
  const double q = std::floor(std::sqrt(2147483647.0 / static_cast<double>(std::max<int64_t>(Dp, 1))));
  return static_cast<int32_t>(std::min(32767.0, q));
}

namespace {

constexpr int64_t kCodes = 16;     // codes per packed block (two 8-lane vectors)
constexpr int64_t kRows = 6;       // token rows of the register block (12 accumulators)
constexpr int64_t kListCap = 32;   // candidates a token may hold while an item runs
constexpr int64_t kStatBlock = 64; // codes per block of the bound's maxima (range_maxima's)

// The power of two s = 2^e, e in [-126, 127], smallest with m <= q s (m = max |v| of a row): s q
// and v - s round(v / s) are then exact in float32. 1 where m is 0 or not finite (such a row's
// bound is infinite or its products are all zero).
float pow2_scale(float m, int32_t q) {
  if (!(m > 0.f) || !std::isfinite(m)) return 1.f;
  int e = 0;
  std::frexp(static_cast<double>(m) / q, &e);  // 2^(e-1) <= m / q < 2^e, up to the division's rounding
  const double md = m;
  while (md > q * std::ldexp(1.0, e)) ++e;
  while (e > -126 && md <= q * std::ldexp(1.0, e - 1)) --e;
  e = std::max(-126, std::min(127, e));
  return static_cast<float>(std::ldexp(1.0, e));
}

}  // namespace
}  // namespace cpu
}  // namespace sgcvq

#if defined(__x86_64__)
#include <immintrin.h>

namespace sgcvq {
namespace cpu {
namespace {

// 64-byte aligned scratch (at::empty storage), per thread.
struct Scratch {
  at::Tensor a;                // int16 [tokens, lda] the quantised rows
  at::Tensor s;                // float [kRows, tile codes] a strip of approximate distances
  std::vector<float> rt, xx, r2, best, margin, val;
  std::vector<int32_t> count, idx;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}
template <typename T>
T* at_least(at::Tensor& t, int64_t n, at::ScalarType dt) {
  if (!t.defined() || t.numel() < n) t = at::empty({n}, at::TensorOptions().dtype(dt));
  return t.data_ptr<T>();
}

}  // namespace
}  // namespace cpu
}  // namespace sgcvq

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include "lanes_avx2.h"

namespace sgcvq {
namespace cpu {
namespace {

// Rows xs [mm, D] centred on c: a [mm, lda] = round(x' / s_x) as int16 (zero past D), rt = -2 s_x,
// xx = sum x'^2 and r2 = sum (2 (x' - s_x q))^2 (float32 sums; each residual is exact).
void quantise_rows(const float* xs, int64_t mm, int64_t D, int64_t lda, const float* c, int32_t q, int16_t* a,
                   float* rt, float* xx, float* r2) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t t = 0; t < mm; ++t) {
    const float* x = xs + t * D;
    __m256 mx = _mm256_setzero_ps(), sx = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
      const __m256i m = lanes_below(D - d);
      const __m256 v = _mm256_sub_ps(_mm256_maskload_ps(x + d, m), _mm256_maskload_ps(c + d, m));
      mx = _mm256_max_ps(_mm256_andnot_ps(sign, v), mx);
      sx = _mm256_fmadd_ps(v, v, sx);
    }
    alignas(32) float l[8];
    _mm256_store_ps(l, mx);
    float m = 0.f;
    for (int j = 0; j < 8; ++j) m = l[j] > m ? l[j] : m;
    _mm256_store_ps(l, sx);
    xx[t] = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    const float s = pow2_scale(m, q);
    const __m256 vs = _mm256_set1_ps(s), inv = _mm256_set1_ps(1.f / s);
    __m256 sr = _mm256_setzero_ps();
    int16_t* row = a + t * lda;
    for (int64_t d = 0; d < lda; d += 16) {
      __m256i qi[2];
      for (int h = 0; h < 2; ++h) {
        const int64_t at = d + 8 * h;
        const __m256i m = lanes_below(D - at);
        const __m256 v = _mm256_sub_ps(_mm256_maskload_ps(x + at, m), _mm256_maskload_ps(c + at, m));
        qi[h] = _mm256_cvtps_epi32(_mm256_mul_ps(v, inv));  // round to nearest even
        const __m256 res = _mm256_sub_ps(v, _mm256_mul_ps(_mm256_cvtepi32_ps(qi[h]), vs));
        const __m256 r2x = _mm256_add_ps(res, res);
        sr = _mm256_fmadd_ps(r2x, r2x, sr);
      }
      // packs works per 128-bit lane: [q0 0-3, q1 0-3, q0 4-7, q1 4-7] -> reorder the quarters.
      const __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(qi[0], qi[1]), 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + d), p);
    }
    _mm256_store_ps(l, sr);
    r2[t] = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    rt[t] = -2.f * s;
  }
}

// acc += vpmaddwd(x, b), as one asm statement: written as intrinsics, GCC issued all twelve
// multiplies of a step first and kept half the accumulators on the stack (a load and a store per
// add); here each multiply goes straight into its add through one temporary register.
__attribute__((always_inline)) inline void madd_add(__m256i& acc, __m256i x, __m256i b) {
  __m256i t;
  asm("vpmaddwd %[b], %[x], %[t]\n\tvpaddd %[t], %[acc], %[acc]" : [acc] "+x"(acc), [t] "=&x"(t) : [x] "x"(x), [b] "x"(b));
}

// R rows x 16 codes over P feature pairs: acc[r][h] = a[r] pairs . codes 8h .. 8h + 7 (12
// accumulators, 2 code vectors and a broadcast: 15 of the 16 registers at R = 6).
template <int R>
__attribute__((always_inline)) inline void tile_block(const int32_t* a, int64_t lda32, const int32_t* b, int64_t P,
                                                      __m256i (&acc)[kRows][2]) {
  __m256i c0[R], c1[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm256_setzero_si256();
  const int32_t* ar[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) ar[r] = a + r * lda32;
  for (int64_t p = 0; p < P; ++p) {
    const __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + p * kCodes));
    const __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + p * kCodes + 8));
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256i x = _mm256_set1_epi32(ar[r][p]);
      madd_add(c0[r], x, b0);
      madd_add(c1[r], x, b1);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    acc[r][0] = c0[r];
    acc[r][1] = c1[r];
  }
}

// One strip: R token rows against the 16-code blocks [kb0, kb1) (codes outside [k0, k1) get
// +inf); s[r * lds + (k - kb0)] = the approximate distance, rmin[r] the row's minimum.
template <int R>
void strip(const int32_t* a, int64_t lda32, const float* rt, const Bf16Codebook& cb, const int32_t* packed, int64_t P,
           int64_t kb0, int64_t kb1, int64_t k0, int64_t k1, float* s, int64_t lds, float* rmin) {
  const __m256 inf = _mm256_set1_ps(kInf);
  __m256 mn[kRows];
  for (int r = 0; r < R; ++r) mn[r] = inf;
  __m256i acc[kRows][2];
  for (int64_t kb = kb0; kb < kb1; kb += kCodes) {
    tile_block<R>(a, lda32, packed + (kb / kCodes) * P * kCodes, P, acc);
    for (int h = 0; h < 2; ++h) {
      const int64_t k = kb + 8 * h;
      const __m256 nv = _mm256_loadu_ps(cb.norms.data() + k), cs = _mm256_loadu_ps(cb.code_scale.data() + k);
      __m256 out = _mm256_setzero_ps();  // lanes inside [k0, k1): all-ones
      const bool edge = k < k0 || k + 8 > k1;
      if (edge) {
        const __m256i code = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(k)), lane_index());
        out = _mm256_castsi256_ps(_mm256_or_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(k0)), code),
                                                  _mm256_cmpgt_epi32(code, _mm256_set1_epi32(static_cast<int32_t>(k1 - 1)))));
      }
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        // (float(acc) s_k) (-2 s_x) + ||e'||^2: s_k and s_x powers of two, one rounding in the FMA.
        __m256 v = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][h]), cs), _mm256_set1_ps(rt[r]), nv);
        if (edge) v = _mm256_blendv_ps(v, inf, out);
        _mm256_storeu_ps(s + r * lds + (k - kb0), v);
        mn[r] = _mm256_min_ps(v, mn[r]);  // a NaN v leaves the minimum
      }
    }
  }
  alignas(32) float l[8];
  for (int r = 0; r < R; ++r) {
    _mm256_store_ps(l, mn[r]);
    float m = l[0];
    for (int j = 1; j < 8; ++j) m = l[j] < m ? l[j] : m;
    rmin[r] = m;
  }
}

using StripFn = void (*)(const int32_t*, int64_t, const float*, const Bf16Codebook&, const int32_t*, int64_t, int64_t,
                         int64_t, int64_t, int64_t, float*, int64_t, float*);
constexpr StripFn kStrips[kRows + 1] = {nullptr, &strip<1>, &strip<2>, &strip<3>, &strip<4>, &strip<5>, &strip<6>};

// One token's row of a strip (n columns, code kb0 + j): b <- min(b, rmin), then every code below
// b + margin joins the list (dropping entries at or above it when the list fills; n = -1 once it
// overflows anyway).
void scan_row(const float* row, int64_t ncols, int64_t kb0, float rmin, float margin, float& b, int32_t& n,
              int32_t* idx, float* val) {
  if (n < 0) return;
  if (rmin < b) b = rmin;
  const float t = b + margin;
  const __m256 thr = _mm256_set1_ps(t);
  for (int64_t j = 0; j < ncols; j += 8) {
    const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + j), thr, _CMP_LT_OQ));
    if (__builtin_expect(hit == 0, 1)) continue;
    const int32_t h = __builtin_popcount(static_cast<unsigned>(hit));
    if (n + h > kListCap) {
      n = drop_at_or_above(idx, val, n, t);
      if (n + h > kListCap) {
        n = -1;
        return;
      }
    }
    for (int m = hit; m != 0; m &= m - 1) {
      const int l = __builtin_ctz(static_cast<unsigned>(m));
      idx[n] = static_cast<int32_t>(kb0 + j + l);
      val[n] = row[j + l];
      ++n;
    }
  }
}

}  // namespace

int64_t int16_search_item(const float* xs, int64_t tn, const Bf16Codebook& cb, int64_t k0, int64_t k1, int64_t g0,
                          int64_t g1, double g, CandList* out, Bf16Bound* bounds) {
  TORCH_CHECK(avx2_kernels_on(), "int16_search_item: the AVX2 kernels are off on this CPU");
  const int64_t D = cb.D, Dp = cb.Dp, P = Dp / 2;
  const int64_t lda = (Dp + 15) / 16 * 16;
  Scratch& sc = scratch();
  int16_t* a = at_least<int16_t>(sc.a, tn * lda, at::kShort);
  sc.rt.resize(static_cast<size_t>(tn));
  sc.xx.resize(static_cast<size_t>(tn));
  sc.r2.resize(static_cast<size_t>(tn));
  sc.margin.resize(static_cast<size_t>(tn));
  sc.best.assign(static_cast<size_t>(tn), kInf);
  sc.count.assign(static_cast<size_t>(tn), 0);
  sc.idx.resize(static_cast<size_t>(tn * kListCap));
  sc.val.resize(static_cast<size_t>(tn * kListCap));
  quantise_rows(xs, tn, D, lda, cb.center.data_ptr<float>(), int16_q_max(Dp), a, sc.rt.data(), sc.xx.data(),
                sc.r2.data());
  double max_e2, max_err;
  range_maxima(cb, g0, g1, max_e2, max_err);
  for (int64_t t = 0; t < tn; ++t) {
    bounds[t] = bf16_bound(sc.xx[t], sc.r2[t], D, g, max_e2, max_err);
    sc.margin[t] = bounds[t].margin_up;
  }
  // Codes per tile: its packed codes (~192 KB) stay in L2 while every strip of rows passes.
  const int64_t tile = std::max<int64_t>(kCodes, std::min<int64_t>(512, 196608 / (Dp * 2)) / kCodes * kCodes);
  float* s = at_least<float>(sc.s, kRows * tile, at::kFloat);
  float rmin[kRows];
  const int32_t* packed = reinterpret_cast<const int32_t*>(cb.packed.data_ptr<int16_t>());
  const int32_t* a32 = reinterpret_cast<const int32_t*>(a);
  const int64_t kb_first = k0 / kCodes * kCodes, kb_end = (k1 + kCodes - 1) / kCodes * kCodes;
  for (int64_t kt = kb_first; kt < kb_end; kt += tile) {
    const int64_t ke = std::min(kt + tile, kb_end);
    for (int64_t r0 = 0; r0 < tn; r0 += kRows) {
      const int64_t rows = std::min(kRows, tn - r0);
      kStrips[rows](a32 + r0 * (lda / 2), lda / 2, sc.rt.data() + r0, cb, packed, P, kt, ke, k0, k1, s, tile, rmin);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t t = r0 + r;
        scan_row(s + r * tile, ke - kt, kt, rmin[r], sc.margin[t], sc.best[t], sc.count[t],
                 sc.idx.data() + t * kListCap, sc.val.data() + t * kListCap);
      }
    }
  }
  int64_t overflowed = 0;
  for (int64_t t = 0; t < tn; ++t) {
    CandList& o = out[t];
    o.b = sc.best[t];
    int32_t n = sc.count[t];
    // Entries listed before b last fell may lie at or above the final b + margin.
    if (n > 0) n = drop_at_or_above(sc.idx.data() + t * kListCap, sc.val.data() + t * kListCap, n, o.b + sc.margin[t]);
    o.n = n > kMaxCand ? -1 : n;
    overflowed += o.n < 0;
    std::memcpy(o.idx, sc.idx.data() + t * kListCap, sizeof(o.idx));
  }
  return overflowed;
}

}  // namespace cpu
}  // namespace sgcvq

#pragma GCC pop_options

#else  // not x86-64

namespace sgcvq {
namespace cpu {
int64_t int16_search_item(const float*, int64_t, const Bf16Codebook&, int64_t, int64_t, int64_t, int64_t, double,
                          CandList*, Bf16Bound*) {
  TORCH_CHECK(false, "int16_search_item: the AVX2 kernels exist on x86-64 only");
  return 0;
}
}  // namespace cpu
}  // namespace sgcvq

#endif

namespace sgcvq {
namespace cpu {

Bf16Codebook pack_int16_codebook(const at::Tensor& E) {
  Bf16Codebook cb;
  cb.path = Bf16Path::kAvx2Int16;
  const int64_t K = E.size(0), D = E.size(1);
  cb.K = K;
  cb.D = D;
  cb.Kp = (K + kCodes - 1) / kCodes * kCodes;
  cb.Dp = (D + 1) / 2 * 2;
  const int64_t Kp = cb.Kp, Dp = cb.Dp, P = Dp / 2;
  const float* ep = E.data_ptr<float>();
  // The centre as pack_bf16_codebook picks it: the mean row where that shrinks the largest squared
  // norm to below 3/4 (a common offset: post-ReLU features), else 0 (a heuristic; any centre is
  // correct, the bound covers rounding x - c and e - c).
  std::vector<double> mean(static_cast<size_t>(D), 0.0);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t d = 0; d < D; ++d) mean[static_cast<size_t>(d)] += ep[k * D + d];
  at::Tensor mf = at::empty({D}, E.options());
  float* mp = mf.data_ptr<float>();
  for (int64_t d = 0; d < D; ++d) mp[d] = static_cast<float>(mean[static_cast<size_t>(d)] / static_cast<double>(K));
  double raw2 = 0.0, centred2 = 0.0;
  for (int64_t k = 0; k < K; ++k) {
    double r = 0.0, c = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      const double e = ep[k * D + d], v = e - mp[d];
      r += e * e;
      c += v * v;
    }
    raw2 = r > raw2 || r != r ? r : raw2;  // a NaN stays
    centred2 = std::max(centred2, c);
  }
  cb.center = centred2 < 0.75 * raw2 ? mf : at::zeros({D}, E.options());
  const float* cp = cb.center.data_ptr<float>();
  const int32_t q = int16_q_max(Dp);
  cb.packed = at::zeros({Kp * Dp}, E.options().dtype(at::kShort));
  int16_t* pk = cb.packed.data_ptr<int16_t>();
  cb.norms.assign(static_cast<size_t>(Kp), 0.f);
  cb.code_scale.assign(static_cast<size_t>(Kp), 0.f);
  const int64_t stat_blocks = (K + kStatBlock - 1) / kStatBlock;
  cb.block_err2.assign(static_cast<size_t>(stat_blocks), 0.f);
  cb.block_e2.assign(static_cast<size_t>(stat_blocks), 0.f);
  std::atomic<bool> finite{raw2 <= static_cast<double>(std::numeric_limits<float>::max())};  // false for NaN
  at::parallel_for(0, stat_blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> v(static_cast<size_t>(D));
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t k = b * kStatBlock; k < std::min(K, (b + 1) * kStatBlock); ++k) {
        float m = 0.f, e2 = 0.f, err2 = 0.f;
        for (int64_t d = 0; d < D; ++d) {
          v[static_cast<size_t>(d)] = ep[k * D + d] - cp[d];
          m = std::max(m, std::fabs(v[static_cast<size_t>(d)]));
          e2 += v[static_cast<size_t>(d)] * v[static_cast<size_t>(d)];
        }
        const float s = pow2_scale(m, q);
        // [Kp / 16][P][16] pairs: feature d of code k at ((k / 16) P + d / 2) 32 + (k % 16) 2 + d % 2.
        int16_t* dst = pk + (k / kCodes) * P * kCodes * 2 + (k % kCodes) * 2;
        for (int64_t d = 0; d < D; ++d) {
          const float x = v[static_cast<size_t>(d)];
          const float qv = std::isfinite(x) ? std::nearbyint(x / s) : 0.f;  // |qv| <= q
          const float r = x - qv * s;  // exact: see pow2_scale
          err2 += r * r;
          dst[(d / 2) * kCodes * 2 + d % 2] = static_cast<int16_t>(qv);
        }
        cb.norms[static_cast<size_t>(k)] = e2;
        cb.code_scale[static_cast<size_t>(k)] = s;
        if (!std::isfinite(e2)) finite = false;
        cb.block_e2[static_cast<size_t>(b)] = std::max(cb.block_e2[static_cast<size_t>(b)], e2);
        cb.block_err2[static_cast<size_t>(b)] = std::max(cb.block_err2[static_cast<size_t>(b)], err2);
      }
  });
  // float32 sums of D squares: relative error below g = (2D + 8) 2^-24 (as pack_bf16_codebook).
  const double g = (2.0 * static_cast<double>(D) + 8.0) * std::ldexp(1.0, -24);
  const double err2 = *std::max_element(cb.block_err2.begin(), cb.block_err2.end());
  cb.max_err = std::sqrt(err2 * (1.0 + g)) * (1.0 + 1e-9);
  cb.max_e2 = *std::max_element(cb.block_e2.begin(), cb.block_e2.end()) * (1.001 + 2.0 * g);
  if (!finite.load()) {  // non-finite codes or norms: every token goes to the float32 search
    cb.max_e2 = std::numeric_limits<double>::infinity();
    cb.max_err = std::numeric_limits<double>::infinity();
  }
  return cb;
}

}  // namespace cpu
}  // namespace sgcvq
