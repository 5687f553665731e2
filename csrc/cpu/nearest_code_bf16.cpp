// The CPU fast_exact search for D > 16 (see nearest_code_bf16.h).
#include "nearest_code_bf16.h"
#include "../include/sgcvq/certificate.h"

#include "avx2/cpu_kind.h"
#include "avx2/int16_search_avx2.h"
#include "bf16_tile_avx512.h"
#include "nearest_code_scan.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace sgcvq {
namespace cpu {

namespace {

constexpr int64_t kBlockN = 64;    // codes per brgemm call (the packed block width oneDNN takes)
constexpr int64_t kTileM = 128;    // tokens per GEMM tile
constexpr int64_t kTileK = 512;    // codes per GEMM tile: S is kTileM x kTileK floats = 256 KB (L2)
constexpr int64_t kListCap = 32;   // candidates a token may hold while an item runs
constexpr int64_t kTileRows = 6;   // rows of bf16_tile_avx512's register block

// The GEMM operands live in at::empty storage, which is 64-byte aligned (c10's CPU allocator):
// with std::vector's 16-byte alignment the bf16 search's time varied by 20% from process to process.
struct ItemScratch {
  at::Tensor a;                  // [kTileM, lda] bf16(-2 (x - centre))
  at::Tensor s;                  // [kTileM, kTileK] float32
  std::vector<float> best;       // [tokens] running b
  std::vector<int32_t> count;    // [tokens] list sizes (-1: overflowed)
  std::vector<int32_t> idx;      // [tokens, kListCap]
  std::vector<float> val;        // [tokens, kListCap]
  std::vector<float> margin;     // [tokens] bound.margin as a float, rounded up
  std::vector<float> rowmin = std::vector<float>(kTileM * kLanes);  // [kTileM][16] the tile rows' minima
};

__attribute__((target("avx512f,avx512dq"))) inline float row_min16(const float* v) {
  return _mm512_reduce_min_ps(_mm512_loadu_ps(v));
}

ItemScratch& scratch() {
  thread_local ItemScratch s;
  return s;
}

// t as at least n elements of dtype dt (reallocated only to grow).
template <typename T>
T* at_least(at::Tensor& t, int64_t n, at::ScalarType dt) {
  if (!t.defined() || t.numel() < n) t = at::empty({n}, at::TensorOptions().dtype(dt));
  return t.data_ptr<T>();
}

// Appends the codes of v (codes k .. k+15) below thr to the token's list; false when the list
// overflowed even after dropping the entries at or above thr (the token then goes exact).
__attribute__((target("avx512f,avx512dq"))) inline bool append_hits(__mmask16 hit, __m512 v, int64_t k,
                                                                    float thr, int32_t& n, int32_t* idx,
                                                                    float* val) {
  if (n + kLanes > kListCap) {
    n = drop_at_or_above(idx, val, n, thr);
    if (n + kLanes > kListCap) {
      n = -1;
      return false;
    }
  }
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // Register compress and a masked store (the memory form of vcompress is microcoded on AMD).
  const int32_t h = __builtin_popcount(hit);
  const __mmask16 first = static_cast<__mmask16>((1u << h) - 1u);
  _mm512_mask_storeu_epi32(idx + n, first,
                           _mm512_maskz_compress_epi32(hit, _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(k)), iota)));
  _mm512_mask_storeu_ps(val + n, first, _mm512_maskz_compress_ps(hit, v));
  n += h;
  return true;
}

// Approximate distances S + norms of codes kb + j .. kb + j + 15 of a row, lanes at or past j1
// masked off (m); norms == nullptr: the row holds them already (bf16_tile_avx512 added the norms).
__attribute__((target("avx512f,avx512dq"))) inline __m512 row_values(const float* row, const float* norms,
                                                                     int64_t kb, int64_t j, int64_t j1,
                                                                     __mmask16& m) {
  m = static_cast<__mmask16>(j1 - j >= kLanes ? 0xFFFF : (1u << (j1 - j)) - 1u);
  if (norms == nullptr) return _mm512_maskz_loadu_ps(m, row + j);
  return _mm512_add_ps(_mm512_maskz_loadu_ps(m, row + j), _mm512_maskz_loadu_ps(m, norms + kb + j));
}

// One token row of the S tile: columns [j0, j1) hold codes kb + j; approximate distances are
// S + norms. Once the token has a finite best b, one pass appends every code below the current
// b + margin and takes the row minimum (a later, lower b only shrinks the set that must be kept).
// The token's first row needs its minimum first: two passes, the first a branch-free vector min.
__attribute__((target("avx512f,avx512dq"))) void scan_row(const float* row, const float* norms,
                                                          int64_t kb, int64_t j0, int64_t j1,
                                                          float margin, float& b, int32_t& n,
                                                          int32_t* idx, float* val) {
  const __m512 inf = _mm512_set1_ps(kInf);
  __m512 mn = inf;
  if (!(b < kInf)) {
    for (int64_t j = j0; j < j1; j += kLanes) {
      __mmask16 m;
      const __m512 v = row_values(row, norms, kb, j, j1, m);
      mn = _mm512_mask_min_ps(mn, m, v, mn);  // min(v, mn) keeps mn where v is NaN
    }
    b = _mm512_reduce_min_ps(mn);
  }
  if (n < 0) return;
  const float t = b + margin;
  const __m512 thr = _mm512_set1_ps(t);
  for (int64_t j = j0; j < j1; j += kLanes) {
    __mmask16 m;
    const __m512 v = row_values(row, norms, kb, j, j1, m);
    mn = _mm512_mask_min_ps(mn, m, v, mn);
    const __mmask16 hit = _mm512_mask_cmp_ps_mask(m, v, thr, _CMP_LT_OQ);
    if (__builtin_expect(hit != 0, 0) && !append_hits(hit, v, kb + j, t, n, idx, val)) break;
  }
  b = std::min(b, _mm512_reduce_min_ps(mn));
}

// scan_row for a row whose minimum b the tile already gave (its values include the norms): the
// codes below b + margin are usually a few, but each took a mispredicted branch in scan_row. Here
// a first pass notes the vectors with hits without a branch, a second stores their hits (storing
// every vector's, with the count carried through kmov + popcnt, made each vector wait ~5 cycles).
__attribute__((target("avx512f,avx512dq,avx512bw"))) void scan_row_known_min(const float* row, int64_t kb, int64_t j0,
                                                                             int64_t j1, float margin, float b,
                                                                             int32_t& count, int32_t* idx, float* val) {
  int32_t n = count;
  if (n < 0) return;
  const float t = b + margin;
  const __m512 thr = _mm512_set1_ps(t);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // Pass one notes the vectors with hits (no branch: the note is written always, the count moves
  // when there are hits); pass two stores those vectors' hits, usually two or three.
  uint16_t hits[kTileK / kLanes + 1];
  int32_t where[kTileK / kLanes + 1];
  int32_t total = 0, with = 0;
  for (int64_t j = j0; j < j1; j += kLanes) {
    __mmask16 m;
    const __m512 v = row_values(row, nullptr, kb, j, j1, m);
    const __mmask16 hit = _mm512_mask_cmp_ps_mask(m, v, thr, _CMP_LT_OQ);
    hits[with] = hit;
    where[with] = static_cast<int32_t>(j);
    with += hit != 0;
    total += __builtin_popcount(hit);
  }
  if (__builtin_expect(n + total > kListCap, 0)) {
    n = drop_at_or_above(idx, val, n, t);
    if (n + total > kListCap) {
      count = -1;
      return;
    }
  }
  for (int32_t w = 0; w < with; ++w) {
    const __mmask16 hit = hits[w];
    const int64_t j = where[w];
    const int32_t h = __builtin_popcount(hit);
    const __mmask16 first = static_cast<__mmask16>((1u << h) - 1u);
    __mmask16 m;
    const __m512 v = row_values(row, nullptr, kb, j, j1, m);
    const __m512i k = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(kb + j)), iota);
    _mm512_mask_storeu_epi32(idx + n, first, _mm512_maskz_compress_epi32(hit, k));
    _mm512_mask_storeu_ps(val + n, first, _mm512_maskz_compress_ps(hit, v));
    n += h;
  }
  count = n;
}

// Rows xs [mm, D], centred on c [D]: x' = x - c in float32, then a [mm, lda] = bf16(scale x')
// rounded to nearest even as c10::BFloat16 does, zero past D (lda a multiple of 16); and the
// float32 sums xx = sum x'^2 and r2 = sum (bf16(scale x') - scale x')^2 (scale a power of two, so
// each difference is exact).
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw"))) void to_bf16_rows(const float* xs, int64_t mm, int64_t D,
                                                              int64_t lda, float scale, const float* c,
                                                              c10::BFloat16* a, float* xx, float* r2) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF);
  int64_t t = 0;
  if (D <= 8 && lda == kLanes) {
    // Two rows a register (lanes 0-7, 8-15): the two sums of each half by three shuffle-adds, for
    // both rows at once (any order of a sum is within the bound's g).
    const __mmask8 m8 = static_cast<__mmask8>((1u << D) - 1u);
    const __m256 ch = _mm256_maskz_loadu_ps(m8, c);
    const __m512 cc = _mm512_insertf32x8(_mm512_castps256_ps512(ch), ch, 1);
    for (; t + 2 <= mm; t += 2) {
      const __m512 xv = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_maskz_loadu_ps(m8, xs + t * D)),
                                           _mm256_maskz_loadu_ps(m8, xs + (t + 1) * D), 1);
      const __m512 v = _mm512_sub_ps(xv, cc);
      const __m512 w = _mm512_mul_ps(v, _mm512_set1_ps(scale));
      const __m512i bits = _mm512_castps_si512(w);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), one);
      const __m512i hi = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, bias)), 16);
      const __m512 diff = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_slli_epi32(hi, 16)), w);
      const __m512 sx = sum_halves(_mm512_mul_ps(v, v)), sr = sum_halves(_mm512_mul_ps(diff, diff));
      const __m256i h16 = _mm512_cvtepi32_epi16(hi);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(a + t * lda), _mm256_castsi256_si128(h16));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(a + t * lda + 8), _mm_setzero_si128());
      _mm_storeu_si128(reinterpret_cast<__m128i*>(a + (t + 1) * lda), _mm256_extracti128_si256(h16, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(a + (t + 1) * lda + 8), _mm_setzero_si128());
      xx[t] = _mm512_cvtss_f32(sx);
      r2[t] = _mm512_cvtss_f32(sr);
      xx[t + 1] = _mm256_cvtss_f32(_mm512_extractf32x8_ps(sx, 1));
      r2[t + 1] = _mm256_cvtss_f32(_mm512_extractf32x8_ps(sr, 1));
    }
  }
  for (; t < mm; ++t) {
    __m512 sx = _mm512_setzero_ps(), sr = _mm512_setzero_ps();
    for (int64_t d = 0; d < lda; d += kLanes) {
      const int64_t left = std::min<int64_t>(kLanes, D - d);
      const __mmask16 m = static_cast<__mmask16>(left >= kLanes ? 0xFFFF : left > 0 ? (1u << left) - 1u : 0u);
      const __m512 v = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, xs + t * D + d), _mm512_maskz_loadu_ps(m, c + d));
      const __m512 w = _mm512_mul_ps(v, _mm512_set1_ps(scale));
      const __m512i bits = _mm512_castps_si512(w);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), one);
      const __m512i hi = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, bias)), 16);
      const __m512 h = _mm512_castsi512_ps(_mm512_slli_epi32(hi, 16));
      const __m512 diff = _mm512_sub_ps(h, w);
      sx = _mm512_fmadd_ps(v, v, sx);
      sr = _mm512_fmadd_ps(diff, diff, sr);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(a + t * lda + d), _mm512_cvtepi32_epi16(hi));
    }
    xx[t] = _mm512_reduce_add_ps(sx);
    r2[t] = _mm512_reduce_add_ps(sr);
  }
}

}  // namespace

namespace {

// oneDNN's brgemm ukernel with AMX tiles: this torch build has it and it packs bf16 here
// (could_pack(bf16) is false on an AMD EPYC with AVX512_BF16 but no AMX, where our own tiles run).
bool amx_brgemm_here() {
  static const bool yes = [] {
#if defined(CPUBLAS_BRGEMM_BF16BF16F32)  // older torch: no AMX path
    try {
      return at::native::cpublas::could_pack(at::kBFloat16);
    } catch (const std::exception&) {
      return false;
    }
#else
    return false;
#endif
  }();
  return yes;
}

}  // namespace

std::vector<Bf16Path> bf16_paths_here() {
  std::vector<Bf16Path> paths;
  if (scan_uses_avx512()) {  // the candidate scans of both paths are AVX-512 code
    if (amx_brgemm_here()) paths.push_back(Bf16Path::kAmx);
    if (cpu_has_avx512_bf16()) paths.push_back(Bf16Path::kAvx512Bf16);
  }
  if (avx2_kernels_on()) paths.push_back(Bf16Path::kAvx2Int16);
  paths.push_back(Bf16Path::kOff);
  return paths;
}

Bf16Path bf16_path(const CpuOptions& opts) {
  // not cached: SGCVQ_CPU_AVX2 (avx2_kernels_on) may switch the list between calls
  const std::vector<Bf16Path> here = bf16_paths_here();
  const char* env = opts.bf16.c_str();
  if (env[0] == '\0') return here.front();
  Bf16Path want;
  if (std::strcmp(env, "amx") == 0) {
    want = Bf16Path::kAmx;
  } else if (std::strcmp(env, "avx512bf16") == 0) {
    want = Bf16Path::kAvx512Bf16;
  } else if (std::strcmp(env, "avx2int16") == 0) {
    want = Bf16Path::kAvx2Int16;
  } else if (std::strcmp(env, "off") == 0 || std::strcmp(env, "0") == 0) {
    return Bf16Path::kOff;
  } else {
    TORCH_CHECK(false, "SGCVQ_CPU_BF16 must be 'amx', 'avx512bf16', 'avx2int16' or 'off', got '", env, "'");
  }
  std::string have;
  for (const Bf16Path p : here) have += std::string(have.empty() ? "" : ", ") + bf16_path_name(p);
  TORCH_CHECK(std::find(here.begin(), here.end(), want) != here.end(), "SGCVQ_CPU_BF16=", env,
              " but this CPU (or torch build, or SGCVQ_CPU_PORTABLE) cannot run that path; it runs: ", have);
  return want;
}


namespace {
std::atomic<int64_t> g_last_redo{-1}, g_last_searched{-1}, g_calls{0};
}  // namespace
void note_fast_exact_redo(int64_t n, int64_t searched) {
  g_last_redo.store(n);
  g_last_searched.store(searched);
  g_calls.fetch_add(1);
}
int64_t last_fast_exact_redo() { return g_last_redo.load(); }
int64_t last_bf16_searched() { return g_last_searched.load(); }
int64_t bf16_search_calls() { return g_calls.load(); }

namespace {

// Writes block rows (bf16 bits, [64][lda]) in the layout brgemm takes for B with ld_b = 64: pairs
// of features interleaved per code, [Dp/2][64][2] (VNNI-2). pack_layout_matches() checks this
// against oneDNN's own pack once; where it differs, oneDNN's pack is used instead.
void write_vnni_block(const c10::BFloat16* rows, int64_t lda, int64_t Dp, c10::BFloat16* out) {
  const uint32_t* src = reinterpret_cast<const uint32_t*>(rows);
  uint32_t* dst = reinterpret_cast<uint32_t*>(out);
  for (int64_t j = 0; j < kBlockN; ++j)
    for (int64_t p = 0; p < Dp / 2; ++p) dst[p * kBlockN + j] = src[j * (lda / 2) + p];
}

#if defined(CPUBLAS_BRGEMM_BF16BF16F32)
bool pack_layout_matches() {
  static const bool same = [] {
    const int64_t Dp = 34, lda = 48;
    std::vector<c10::BFloat16> rows(static_cast<size_t>(kBlockN * lda), c10::BFloat16(0.f));
    std::vector<c10::BFloat16> bt(static_cast<size_t>(Dp * kBlockN));
    for (int64_t j = 0; j < kBlockN; ++j)
      for (int64_t d = 0; d < Dp; ++d) {
        c10::BFloat16 v;  // a distinct normal number at every position
        v.x = static_cast<uint16_t>(0x3F80 + j * Dp + d);
        rows[static_cast<size_t>(j * lda + d)] = v;
        bt[static_cast<size_t>(d * kBlockN + j)] = v;
      }
    std::vector<c10::BFloat16> mine(static_cast<size_t>(Dp * kBlockN)), theirs(mine.size());
    write_vnni_block(rows.data(), lda, Dp, mine.data());
    at::native::cpublas::pack(Dp, kBlockN, kBlockN, kBlockN, at::kBFloat16, at::kBFloat16, bt.data(), theirs.data());
    return std::memcmp(mine.data(), theirs.data(), mine.size() * sizeof(c10::BFloat16)) == 0;
  }();
  return same;
}
#endif

}  // namespace

bool bf16_own_pack() {
  const Bf16Path p = bf16_path(cpu_options());
  if (p == Bf16Path::kAvx512Bf16 || p == Bf16Path::kAvx2Int16) return true;
#if defined(CPUBLAS_BRGEMM_BF16BF16F32)
  return p == Bf16Path::kAmx && pack_layout_matches();
#else
  return false;
#endif
}

// The orthant cells of SmallSeedCells from the packed codes (one pass over K x D: ~1% of a
// scan of every code by one token group). A code's cell bit d is set where bf16(e'_d) > 0.
void build_seed_cells(Bf16Codebook& cb) {
  const int64_t K = cb.K, P = cb.Dp / 2;
  const int bits = static_cast<int>(std::min<int64_t>(cb.D, 8));
  const int64_t cells = int64_t{1} << bits;
  const uint32_t* b32 = reinterpret_cast<const uint32_t*>(cb.packed.data_ptr<c10::BFloat16>());
  // The packing's [Dp / 2][64][2] blocks: pair p of code k is word (k / 64) 64 P + 64 p + k % 64.
  auto word = [&](int64_t k, int64_t p) { return b32[(k / kBlockN) * kBlockN * P + p * kBlockN + k % kBlockN]; };
  std::vector<int32_t> cell(static_cast<size_t>(K));
  std::vector<int64_t> fill(static_cast<size_t>(cells), 0);
  // Block by block, each bit for the block's 64 codes at once (no branch: the signs are random).
  for (int64_t k0 = 0; k0 < K; k0 += kBlockN) {
    const int64_t n = std::min(kBlockN, K - k0);
    uint32_t id[kBlockN] = {};
    for (int d = 0; d < bits; ++d) {
      const uint32_t* w = b32 + k0 * P + (d >> 1) * kBlockN;
      const int shift = 16 * (d & 1);
      for (int64_t j = 0; j < kBlockN; ++j) {
        const uint32_t h = (w[j] >> shift) & 0xFFFFu;
        id[j] |= (static_cast<uint32_t>((h & 0x7FFFu) != 0u) & ((h >> 15) ^ 1u)) << d;
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      cell[static_cast<size_t>(k0 + j)] = static_cast<int32_t>(id[j]);
      ++fill[id[j]];
    }
  }
  cb.cell_bits = bits;
  cb.cell_start.assign(static_cast<size_t>(cells + 1), 0);
  for (int64_t c = 0; c < cells; ++c) {
    const int64_t first = cb.cell_start[static_cast<size_t>(c)];
    cb.cell_start[static_cast<size_t>(c + 1)] = static_cast<int32_t>(first + (fill[static_cast<size_t>(c)] + 15) / 16);
    fill[static_cast<size_t>(c)] = 16 * first;  // now the cell's next free code slot
  }
  const int64_t vectors = cb.cell_start[static_cast<size_t>(cells)];
  cb.cell_pairs.assign(static_cast<size_t>(vectors * P * 16), 0u);
  cb.cell_norms.assign(static_cast<size_t>(vectors * 16), std::numeric_limits<float>::infinity());
  for (int64_t k = 0; k < K; ++k) {
    const int64_t s = fill[static_cast<size_t>(cell[static_cast<size_t>(k)])]++, v = s / 16, lane = s % 16;
    for (int64_t p = 0; p < P; ++p) cb.cell_pairs[static_cast<size_t>((v * P + p) * 16 + lane)] = word(k, p);
    cb.cell_norms[static_cast<size_t>(s)] = cb.norms[static_cast<size_t>(k)];
  }
}

// The lane-by-lane codes of SmallLaneCodes from the packed codes and their norms (one pass over
// K x D, like the cells above).
void build_lane_codes(Bf16Codebook& cb) {
  const int64_t K = cb.K, P = cb.Dp / 2, blocks = (K + 255) / 256;
  const uint32_t* b32 = reinterpret_cast<const uint32_t*>(cb.packed.data_ptr<c10::BFloat16>());
  cb.lane_pairs.resize(static_cast<size_t>(blocks * 16 * P * 16));
  cb.lane_norms.resize(static_cast<size_t>(blocks * 16 * 16));
  // Written in order (the reads hop by 16 codes inside one packed block): the scattered writes
  // of a loop over k cost 4.5% of a small grouped call.
  uint32_t* lp = cb.lane_pairs.data();
  float* ln = cb.lane_norms.data();
  for (int64_t row = 0; row < blocks * 16; ++row) {
    const int64_t k0 = (row / 16) * 256 + row % 16;  // code of j = 0; j adds 16
    for (int64_t p = 0; p < P; ++p)
      for (int64_t j = 0; j < 16; ++j) {
        const int64_t k = k0 + 16 * j;
        *lp++ = k < K ? b32[(k / kBlockN) * kBlockN * P + p * kBlockN + k % kBlockN] : 0u;
      }
    for (int64_t j = 0; j < 16; ++j) {
      const int64_t k = k0 + 16 * j;
      *ln++ = k < K ? cb.norms[static_cast<size_t>(k)] : std::numeric_limits<float>::infinity();
    }
  }
}

// The codebook's mean row (mean, float32 of the double mean) and the largest ||e||^2 (raw2) and
// ||e - mean||^2 (centred2), in double: pack_bf16_codebook's centring heuristic; raw2 is not
// below FLT_MAX (or NaN) when some code's float32 norm would not be finite.
static __attribute__((target("avx512f,avx512dq,avx512vl"))) void centre_stats_avx512(const float* ep, int64_t K, int64_t D,
                                                                             float* mean, double& raw2,
                                                                             double& centred2) {
  const int64_t chunks = (D + 7) / 8;
  // The mean as doubles in a plain array (a std::vector of __m512d would be built by code
  // compiled without AVX-512).
  std::vector<double> m(static_cast<size_t>(chunks * 8), 0.0);
  auto mask_of = [&](int64_t c) { return static_cast<__mmask8>(D - 8 * c >= 8 ? 0xFFu : (1u << (D - 8 * c)) - 1u); };
  for (int64_t c = 0; c < chunks; ++c) {
    __m512d acc[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
    int64_t k = 0;
    for (; k + 4 <= K; k += 4)  // four rows in flight
      for (int j = 0; j < 4; ++j)
        acc[j] = _mm512_add_pd(acc[j], _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask_of(c), ep + (k + j) * D + 8 * c)));
    for (; k < K; ++k) acc[0] = _mm512_add_pd(acc[0], _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask_of(c), ep + k * D + 8 * c)));
    const __m512d total = _mm512_add_pd(_mm512_add_pd(acc[0], acc[1]), _mm512_add_pd(acc[2], acc[3]));
    const __m256 mf = _mm512_cvtpd_ps(_mm512_div_pd(total, _mm512_set1_pd(static_cast<double>(K))));
    _mm256_mask_storeu_ps(mean + 8 * c, mask_of(c), mf);
    _mm512_storeu_pd(m.data() + 8 * c, _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask_of(c), mean + 8 * c)));
  }
  __m512d best = _mm512_setzero_pd();  // lane k % 8: the largest ||e - mean||^2 so far
  double r2 = 0.0;
  for (int64_t k0 = 0; k0 < K; k0 += 8) {
    alignas(64) double c2[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t j = 0; j < 8 && k0 + j < K; ++j) {
      const int64_t k = k0 + j;
      __m512d acc = _mm512_setzero_pd(), raw = _mm512_setzero_pd();
      for (int64_t c = 0; c < chunks; ++c) {
        const __m512d e = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask_of(c), ep + k * D + 8 * c));
        const __m512d v = _mm512_sub_pd(e, _mm512_loadu_pd(m.data() + 8 * c));
        acc = _mm512_fmadd_pd(v, v, acc);  // zero past D: both loads are masked
        raw = _mm512_fmadd_pd(e, e, raw);
      }
      c2[j] = _mm512_reduce_add_pd(acc);
      const double rk = _mm512_reduce_add_pd(raw);
      r2 = rk > r2 || rk != rk ? rk : r2;  // a NaN stays
    }
    best = _mm512_max_pd(best, _mm512_load_pd(c2));
  }
  raw2 = r2;
  centred2 = _mm512_reduce_max_pd(best);
}

Bf16Codebook pack_bf16_codebook(const at::Tensor& E, bool bf16_values, Bf16Path path, bool seed_cells,
                                bool lane_codes) {
  Bf16Codebook cb;
  cb.path = path;
  cb.K = E.size(0);
  cb.D = E.size(1);
  cb.Kp = (cb.K + kBlockN - 1) / kBlockN * kBlockN;
  cb.Dp = (cb.D + 1) / 2 * 2;
  cb.packed = at::empty({cb.Kp * cb.Dp}, E.options().dtype(at::kBFloat16));
  const int64_t K = cb.K, D = cb.D, Dp = cb.Dp, lda = (Dp + kLanes - 1) / kLanes * kLanes;
  const float* ep = E.data_ptr<float>();
  // The centre: the codebook's mean row where that shrinks the largest squared code norm enough
  // (a common offset), else 0, which keeps x - c exact, and bfloat16 inputs' products exact (for
  // them only a large offset is worth losing that). Any float32 vector would be correct: the bound
  // covers the rounding of x - c and e - c.
  // In double, eight dims a register (a heuristic: its rounding does not matter; the torch ops
  // it replaced, mean, mv and a host read, took 0.12 ms of a 4.7 ms grouped call at K = 16384,
  // D = 8). The bf16 paths run only on CPUs with AVX-512.
  at::Tensor mean = at::empty({D}, E.options());
  double raw2 = 0.0, centred2 = 0.0;
  centre_stats_avx512(ep, K, D, mean.data_ptr<float>(), raw2, centred2);
  const bool centre = centred2 < (bf16_values ? 0.25 : 0.75) * raw2;
  cb.center = centre ? mean : at::zeros({D}, E.options());
  const float* cp = cb.center.data_ptr<float>();
  cb.norms.assign(static_cast<size_t>(cb.Kp), 0.f);  // zero past K: the small-D scan reads whole blocks
  c10::BFloat16* out = cb.packed.data_ptr<c10::BFloat16>();
#if defined(CPUBLAS_BRGEMM_BF16BF16F32)
  // D <= 16 is searched by the AVX512_BF16 scans on AMX machines too, which read this layout.
  const bool mine = path != Bf16Path::kAmx || D <= kSmallMaxD || pack_layout_matches();
#else
  const bool mine = true;
#endif
  const int64_t blocks = cb.Kp / kBlockN;
  std::vector<float> block_err2(static_cast<size_t>(blocks), 0.f), block_e2(static_cast<size_t>(blocks), 0.f);
  // Blocks of 64 codes in parallel: centre each row, round it to bf16 (measuring ||e' - bf16(e')||^2
  // and ||e'||^2), then lay the block out as brgemm wants it.
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<c10::BFloat16> rows(static_cast<size_t>(kBlockN * lda));
    std::vector<c10::BFloat16> bt(mine ? 0 : static_cast<size_t>(Dp * kBlockN));
    std::vector<float> e2(kBlockN), r2(kBlockN);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = std::min(kBlockN, K - b * kBlockN);
      std::fill(rows.begin(), rows.end(), c10::BFloat16(0.f));
      to_bf16_rows(ep + b * kBlockN * D, n, D, lda, 1.f, cp, rows.data(), e2.data(), r2.data());
      std::copy(e2.begin(), e2.begin() + n, cb.norms.begin() + b * kBlockN);
      block_err2[static_cast<size_t>(b)] = *std::max_element(r2.begin(), r2.begin() + n);
      block_e2[static_cast<size_t>(b)] = *std::max_element(e2.begin(), e2.begin() + n);
      if (mine) {
        write_vnni_block(rows.data(), lda, Dp, out + b * kBlockN * Dp);
      } else {
#if defined(CPUBLAS_BRGEMM_BF16BF16F32)
        for (int64_t j = 0; j < kBlockN; ++j)
          for (int64_t d = 0; d < Dp; ++d) bt[static_cast<size_t>(d * kBlockN + j)] = rows[static_cast<size_t>(j * lda + d)];
        at::native::cpublas::pack(Dp, kBlockN, kBlockN, kBlockN, at::kBFloat16, at::kBFloat16, bt.data(),
                                  out + b * kBlockN * Dp);
#endif
      }
    }
  });
  // float32 sums of D squares: relative error below g.
  const double g = cert::sum_error(D);
  const double err2 = *std::max_element(block_err2.begin(), block_err2.end());
  cb.max_err = cert::norm_up(err2, g);
  cb.max_e2 = cert::max_norm2_up(*std::max_element(block_e2.begin(), block_e2.end()), g);
  cb.block_err2 = std::move(block_err2);
  cb.block_e2 = std::move(block_e2);
  // Non-finite codes (or norms that overflow): an infinite bound sends every token to the float32
  // search (std::max_element does not see NaN reliably, so test every norm).
  const bool raw_finite = raw2 <= static_cast<double>(std::numeric_limits<float>::max());  // false for NaN
  for (int64_t k = 0; k < K; ++k)
    if (!raw_finite || !std::isfinite(cb.norms[static_cast<size_t>(k)])) {
      cb.max_e2 = std::numeric_limits<double>::infinity();
      cb.max_err = std::numeric_limits<double>::infinity();
      break;
    }
  if (seed_cells && path == Bf16Path::kAvx512Bf16 && D <= kSmallMaxD) build_seed_cells(cb);
  if (lane_codes && D <= kSmallMaxD) build_lane_codes(cb);
  return cb;
}

Bf16Bound bf16_bound(float xx, float r2, int64_t D, double g, double max_e2, double max_err, double value_rel) {
  const cert::ListBoundTerms b = cert::bf16_list_bound(xx, r2, D, g, max_e2, max_err, value_rel);
  return {b.delta, b.margin, xx, next_up(static_cast<float>(b.margin))};
}

// bf16_bound for n tokens at once, eight in the lanes of an AVX-512 double vector: the same
// operations in the same order as cert::bf16_list_bound (certificate.h) (no fused multiply-adds: the scalar one is built for
// the x86-64 baseline, which has none; and fp-contract=off, or GCC fuses the intrinsics' multiplies
// and adds), so the same bits; and margin[t] = next_up(float(margin)).
// One call per tile instead of a call per token, whose two dependent square roots the loop could
// not overlap (8.5 ns a token, 7% of the grouped search at D = 8).
__attribute__((target("avx512f,avx512dq,avx512vl"), optimize("fp-contract=off"))) void bf16_bounds_avx512(const float* xx, const float* r2, int64_t n,
                                                                    int64_t D, double g, double max_e2,
                                                                    double max_err, double value_rel,
                                                                    Bf16Bound* out, float* margin) {
  const double u = 0x1p-24;
  const double max_e = std::sqrt(max_e2), sd = std::sqrt(static_cast<double>(D));
  const __m512d one_g = _mm512_set1_pd(1.0 + g), eps9 = _mm512_set1_pd(1.0 + 1e-9), eps6 = _mm512_set1_pd(1.0 + 1e-6);
  const __m512d c2g_e2 = _mm512_set1_pd(2.0 * g * max_e2), vmax_e = _mm512_set1_pd(max_e);
  const __m512d vmax_err = _mm512_set1_pd(max_err), vg = _mm512_set1_pd(g), e_err = _mm512_set1_pd(max_e + max_err);
  const __m512d c4u = _mm512_set1_pd(4.0 * u), tiny = _mm512_set1_pd(0x1p-120), vD = _mm512_set1_pd(static_cast<double>(D));
  const __m512d vsd = _mm512_set1_pd(sd), two = _mm512_set1_pd(2.0), c8g = _mm512_set1_pd(8.0 * g);
  const __m512d vmax_e2 = _mm512_set1_pd(max_e2), one_4g = _mm512_set1_pd(1.0 + 4.0 * g);
  const __m512d vrel = _mm512_set1_pd(value_rel), rel_sub = _mm512_set1_pd(value_rel * 0x1p-126);
  const __m256 finf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  alignas(64) double dl[8], mg[8];
  for (int64_t t0 = 0; t0 < n; t0 += 8) {
    const int64_t m = std::min<int64_t>(8, n - t0);
    const __mmask8 k = static_cast<__mmask8>((1u << m) - 1u);
    const __m512d vxx = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, xx + t0));
    const __m512d vr2 = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, r2 + t0));
    const __m512d xn = _mm512_mul_pd(_mm512_sqrt_pd(_mm512_mul_pd(vxx, one_g)), eps9);
    const __m512d r = _mm512_mul_pd(_mm512_sqrt_pd(_mm512_mul_pd(vr2, one_g)), eps9);
    const __m512d ah = _mm512_add_pd(_mm512_mul_pd(two, xn), r);
    const __m512d xe = _mm512_add_pd(xn, vmax_e);
    __m512d delta = _mm512_add_pd(c2g_e2, _mm512_mul_pd(r, vmax_e));
    delta = _mm512_add_pd(delta, _mm512_mul_pd(ah, vmax_err));
    delta = _mm512_add_pd(delta, _mm512_mul_pd(_mm512_mul_pd(vg, ah), e_err));
    delta = _mm512_add_pd(delta, _mm512_mul_pd(_mm512_mul_pd(c4u, xe), xe));
    delta = _mm512_add_pd(delta, _mm512_mul_pd(tiny, _mm512_add_pd(vD, _mm512_mul_pd(vsd, _mm512_add_pd(_mm512_add_pd(ah, vmax_e), vmax_err)))));
    if (value_rel > 0.0) {
      const __m512d vmax = _mm512_add_pd(_mm512_mul_pd(_mm512_add_pd(vmax_e2, _mm512_mul_pd(ah, e_err)), one_4g), delta);
      delta = _mm512_add_pd(delta, _mm512_add_pd(_mm512_mul_pd(vrel, vmax), rel_sub));
    }
    const __m512d slack = _mm512_add_pd(_mm512_mul_pd(c8g, _mm512_add_pd(_mm512_mul_pd(xe, xe), delta)), tiny);
    const __m512d mgn = _mm512_add_pd(_mm512_mul_pd(_mm512_mul_pd(two, delta), eps6), slack);
    _mm512_store_pd(dl, _mm512_mul_pd(delta, eps6));
    _mm512_store_pd(mg, mgn);
    // next_up of the margin rounded to float: +1 ulp for positive finite values, the smallest
    // subnormal for zero; +inf and NaN stay (a margin is never negative).
    const __m256 mf = _mm512_cvtpd_ps(mgn);
    const __m256i bits = _mm256_castps_si256(mf);
    const __mmask8 pos = _mm256_cmp_ps_mask(mf, _mm256_setzero_ps(), _CMP_GT_OQ) &
                         _mm256_cmp_ps_mask(mf, finf, _CMP_LT_OQ);
    const __mmask8 zero = _mm256_cmp_ps_mask(mf, _mm256_setzero_ps(), _CMP_EQ_OQ);
    __m256i up = _mm256_mask_add_epi32(bits, pos, bits, _mm256_set1_epi32(1));
    up = _mm256_mask_mov_epi32(up, zero, _mm256_set1_epi32(1));
    _mm256_mask_storeu_ps(margin + t0, k, _mm256_castsi256_ps(up));
    for (int64_t j = 0; j < m; ++j) out[t0 + j] = {dl[j], mg[j], xx[t0 + j], margin[t0 + j]};
  }
}

void bf16_bounds(const float* xx, const float* r2, int64_t n, int64_t D, double g, double max_e2, double max_err,
                 double value_rel, Bf16Bound* out, float* margin) {
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                              __builtin_cpu_supports("avx512vl");
  if (avx512) return bf16_bounds_avx512(xx, r2, n, D, g, max_e2, max_err, value_rel, out, margin);
  for (int64_t t = 0; t < n; ++t) {
    out[t] = bf16_bound(xx[t], r2[t], D, g, max_e2, max_err, value_rel);
    margin[t] = out[t].margin_up;
  }
}

// The AVX-512 bounds against bf16_bound, bit for bit, over values from 0 through subnormals to
// overflow, +inf and NaN, several D and codebook bounds, with and without the window's value_rel:
// how many tokens differ (for tests; cpu_capabilities-style hook in csrc/ops.cpp).
int64_t bf16_bounds_mismatches() {
  std::vector<float> vals = {0.f, 0x1p-140f, 0x1p-126f, 1e-30f, 1e-8f, 0.1f, 1.f, 3.75f, 64.f, 1e10f, 1e30f,
                             3e38f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()};
  std::vector<float> xx, r2;
  for (const float a : vals)
    for (const float b : vals) {
      xx.push_back(a);
      r2.push_back(b * 1e-5f);
    }
  const int64_t n = static_cast<int64_t>(xx.size());
  std::vector<Bf16Bound> vec(static_cast<size_t>(n));
  std::vector<float> margin(static_cast<size_t>(n));
  auto same = [](double a, double b) { return std::memcmp(&a, &b, sizeof(a)) == 0; };
  auto same_f = [](float a, float b) { return std::memcmp(&a, &b, sizeof(a)) == 0; };
  int64_t bad = 0;
  for (const int64_t D : {1, 8, 16, 64, 256})
    for (const double max_e2 : {0.0, 1.0, 37.5, 1e12})
      for (const double value_rel : {0.0, 0x1p-17}) {
        const double g = cert::sum_error(D), max_err = std::sqrt(max_e2) * 0x1p-8;
        bf16_bounds(xx.data(), r2.data(), n, D, g, max_e2, max_err, value_rel, vec.data(), margin.data());
        for (int64_t t = 0; t < n; ++t) {
          const Bf16Bound s1 = bf16_bound(xx[t], r2[t], D, g, max_e2, max_err, value_rel);
          const Bf16Bound& v = vec[static_cast<size_t>(t)];
          bad += !(same(s1.delta, v.delta) && same(s1.margin, v.margin) && same_f(s1.xx, v.xx) &&
                   same_f(s1.margin_up, v.margin_up) && same_f(s1.margin_up, margin[static_cast<size_t>(t)]));
        }
      }
  return bad;
}

bool small_d_window(const CpuOptions& opts, int64_t codes) {
  const char* env = opts.smalld.c_str();
  if (env[0] != '\0') {
    if (std::strcmp(env, "window") == 0) return true;
    if (std::strcmp(env, "branchy") == 0) return false;
    TORCH_CHECK(false, "SGCVQ_CPU_SMALLD must be 'window' or 'branchy', got '", env, "'");
  }
  return codes <= kSmallWindowMaxCodes;
}

bool seed_cells_enabled(const CpuOptions& opts) {
  const char* env = opts.smalld_seed.c_str();
  if (env[0] == '\0' || std::strcmp(env, "cells") == 0) return true;
  if (std::strcmp(env, "first") == 0) return false;
  TORCH_CHECK(false, "SGCVQ_CPU_SMALLD_SEED must be 'cells' or 'first', got '", env, "'");
}

void range_maxima(const Bf16Codebook& cb, int64_t k0, int64_t k1, double& max_e2, double& max_err) {
  max_e2 = cb.max_e2;
  max_err = cb.max_err;
  if (!std::isfinite(cb.max_e2) || !std::isfinite(cb.max_err) || k1 <= k0) return;
  float e2 = 0.f, err2 = 0.f;
  for (int64_t b = k0 / kBlockN; b <= (k1 - 1) / kBlockN; ++b) {
    e2 = std::max(e2, cb.block_e2[static_cast<size_t>(b)]);
    err2 = std::max(err2, cb.block_err2[static_cast<size_t>(b)]);
  }
  // The same roundings up as pack_bf16_codebook's.
  const double g = cert::sum_error(cb.D);
  max_err = cert::norm_up(static_cast<double>(err2), g);
  max_e2 = cert::max_norm2_up(static_cast<double>(e2), g);
}

int64_t bf16_search_item(const float* xs, int64_t tn, const Bf16Codebook& cb, int64_t k0, int64_t k1, int64_t g0,
                         int64_t g1, int64_t call_codes, double g, CandList* out, Bf16Bound* bounds) {
  if (cb.path == Bf16Path::kAvx2Int16) return int16_search_item(xs, tn, cb, k0, k1, g0, g1, g, out, bounds);
  const int64_t D = cb.D, Dp = cb.Dp;
  ItemScratch& sc = scratch();
  const int64_t lda = (Dp + kLanes - 1) / kLanes * kLanes;
  c10::BFloat16* a = at_least<c10::BFloat16>(sc.a, kTileM * lda, at::kBFloat16);
  // Small D: the branchy scan takes 8 tokens at a time (pad rows are searched and ignored); the
  // window takes any count.
  const bool small = D <= kSmallMaxD;
  const int64_t tpad = small ? (tn + 7) / 8 * 8 : tn;
  // The window writes each value's vector number (relative to k0 / 16) into its low mantissa bits.
  // Decided for the whole call (call_codes: its largest item's code range), so that the bounds of
  // a token searched in several code splits agree (the caller keeps split 0's).
  const int window_bits = small ? bf16_window_bits(call_codes) : 0;
  const bool window = small && cb.small_window;
  sc.margin.resize(static_cast<size_t>(tpad));
  float* margin = sc.margin.data();
  std::fill(margin + tn, margin + tpad, 0.f);  // the pad rows' (the bounds fill the others)
  float xx[kTileM], r2[kTileM];
  if (!window) {  // the window writes b, n and the lists into out itself
    sc.best.assign(static_cast<size_t>(tpad), kInf);
    sc.count.assign(static_cast<size_t>(tpad), 0);
    sc.idx.resize(static_cast<size_t>(tpad * kListCap));
    sc.val.resize(static_cast<size_t>(tpad * kListCap));
  }
  const c10::BFloat16* packed = cb.packed.data_ptr<c10::BFloat16>();
  TORCH_CHECK(!window || !cb.lane_pairs.empty(), "bf16_search_item: the window needs the codebook's lane codes");
  const SmallLaneCodes lanes{cb.lane_pairs.data(), cb.lane_norms.data()};
  const double value_rel = window ? std::ldexp(1.0, window_bits - 23) : 0.0;
  double max_e2, max_err;
  range_maxima(cb, g0, g1, max_e2, max_err);
  // The orthant seed needs every code in the range (its cells hold the whole codebook).
  SmallSeedCells cells;
  const SmallSeedCells* seed_cells = nullptr;
  if (small && !window && cb.seed_cells_on && k0 == 0 && k1 == cb.K && cb.cell_bits > 0) {
    cells = {cb.cell_pairs.data(), cb.cell_norms.data(), cb.cell_start.data(), cb.cell_bits};
    seed_cells = &cells;
  }
  int64_t window_overflowed = 0;
  if (small) {
    for (int64_t m0 = 0; m0 < tn; m0 += kTileM) {
      const int64_t mm = std::min(kTileM, tn - m0), mpad = (mm + 7) / 8 * 8;
      to_bf16_rows(xs + m0 * D, mm, D, lda, -2.f, cb.center.data_ptr<float>(), a, xx, r2);
      std::fill(a + mm * lda, a + mpad * lda, c10::BFloat16(0.f));
      bf16_bounds(xx, r2, mm, D, g, max_e2, max_err, value_rel, bounds + m0, margin + m0);
      if (window)  // b, n and the lists straight into out (none past kMaxCand: a longer list overflows)
        window_overflowed += bf16_small_window_avx512(a, lda, mm, packed, Dp, cb.norms.data(), lanes, k0, k1, margin + m0,
                                                      &out[m0].b, &out[m0].n, out[m0].idx, kCandWords,
                                                      static_cast<int32_t>(kMaxCand));
      else
        bf16_small_scan_avx512(a, lda, mpad, packed, Dp, cb.norms.data(), k0, k1, margin + m0, sc.best.data() + m0,
                               sc.count.data() + m0, sc.idx.data() + m0 * kListCap, sc.val.data() + m0 * kListCap,
                               static_cast<int32_t>(kListCap), seed_cells);
    }
  }
  float* sbuf = small ? nullptr : at_least<float>(sc.s, kTileM * kTileK, at::kFloat);
  const int64_t kb0 = k0 / kBlockN * kBlockN, kb1 = (k1 + kBlockN - 1) / kBlockN * kBlockN;
  for (int64_t m0 = 0; !small && m0 < tn; m0 += kTileM) {
    const int64_t mm = std::min(kTileM, tn - m0);
    to_bf16_rows(xs + m0 * D, mm, D, lda, -2.f, cb.center.data_ptr<float>(), a, xx, r2);
    bf16_bounds(xx, r2, mm, D, g, max_e2, max_err, 0.0, bounds + m0, margin + m0);
    for (int64_t kb = kb0; kb < kb1; kb += kTileK) {
      const int64_t nb = std::min(kTileK, kb1 - kb);
      const float* row_norms = cb.norms.data();
      if (cb.path == Bf16Path::kAvx512Bf16) {
        // The tile adds the norms and gives each row's minimum: the scan then needs one pass. Six
        // rows at a time across the whole tile, so their values are still in L1 when scanned (the
        // codes, kTileK x Dp bf16, come from L2 for each six).
        std::fill(sc.rowmin.begin(), sc.rowmin.begin() + mm * kLanes, kInf);
        row_norms = nullptr;
        const int64_t j0 = std::max<int64_t>(k0, kb) - kb, j1 = std::min<int64_t>(k1, kb + nb) - kb;
        for (int64_t r0 = 0; r0 < mm; r0 += kTileRows) {
          const int64_t rows = std::min(kTileRows, mm - r0);
          bf16_tile_avx512(a + r0 * lda, lda, rows, packed + kb * Dp, Dp, nb / kBlockN, sbuf + r0 * kTileK, kTileK,
                           cb.norms.data(), kb, k0, k1, sc.rowmin.data() + r0 * kLanes);
          for (int64_t t = r0; t < r0 + rows; ++t) {
            const int64_t tok = m0 + t;
            const float tile_min = row_min16(sc.rowmin.data() + t * kLanes);
            if (!(tile_min < sc.best[tok])) {  // no new minimum: few codes enter, the branchy scan
              scan_row(sbuf + t * kTileK, nullptr, kb, j0, j1, margin[tok], sc.best[tok], sc.count[tok],
                       sc.idx.data() + tok * kListCap, sc.val.data() + tok * kListCap);
              continue;
            }
            // A new minimum (the row's first tile, mostly): the codes near it go in without branches.
            sc.best[tok] = tile_min;
            scan_row_known_min(sbuf + t * kTileK, kb, j0, j1, margin[tok], tile_min, sc.count[tok],
                               sc.idx.data() + tok * kListCap, sc.val.data() + tok * kListCap);
          }
        }
        continue;
      } else {
#if defined(CPUBLAS_BRGEMM_BF16BF16F32)
        for (int64_t j = 0; j < nb; j += kBlockN)
          at::native::cpublas::brgemm(mm, kBlockN, Dp, lda, kBlockN, kTileK, false, a,
                                      packed + (kb + j) * Dp, sbuf + j, true);
#else
        TORCH_CHECK(false, "sgcvq: the AMX bf16 search needs torch's cpublas::brgemm (torch >= 2.6)");
#endif
      }
      const int64_t j0 = std::max<int64_t>(k0, kb) - kb, j1 = std::min<int64_t>(k1, kb + nb) - kb;
      for (int64_t t = 0; t < mm; ++t) {
        const int64_t tok = m0 + t;
        scan_row(sbuf + t * kTileK, row_norms, kb, j0, j1, margin[tok], sc.best[tok], sc.count[tok],
                 sc.idx.data() + tok * kListCap, sc.val.data() + tok * kListCap);
      }
    }
  }
  if (window) return window_overflowed;
  int64_t overflowed = 0;
  for (int64_t t = 0; t < tn; ++t) {
    CandList& o = out[t];
    o.b = sc.best[t];
    int32_t n = sc.count[t];
    // The branchy scan's and the tiles' lists may hold entries from before b last fell (the
    // window, above, lists only codes below its final b + margin).
    if (n > 0) n = drop_at_or_above(sc.idx.data() + t * kListCap, sc.val.data() + t * kListCap, n, o.b + margin[t]);
    o.n = n > kMaxCand ? -1 : n;
    overflowed += o.n < 0;
    // A fixed-size copy (the entries past n are not read): no loop whose trip count varies by token.
    static_assert(kListCap >= kMaxCand, "a token's scratch list must cover CandList::idx");
    std::memcpy(o.idx, sc.idx.data() + t * kListCap, sizeof(o.idx));
  }
  return overflowed;
}

void bf16_release(const Bf16Codebook& cb) {
#if defined(CPUBLAS_BRGEMM_BF16BF16F32)
  if (cb.path == Bf16Path::kAmx) at::native::cpublas::brgemm_release(true);
#else
  (void)cb;
#endif
}

}  // namespace cpu
}  // namespace sgcvq

namespace sgcvq {
namespace cpu {
// For cpu_capabilities() (csrc/ops.cpp), which sees no ATen types.
const char* bf16_path_now() { return bf16_path_name(bf16_path(cpu_options())); }
std::vector<const char*> bf16_path_names_here() {
  std::vector<const char*> names;
  for (const Bf16Path p : bf16_paths_here()) names.push_back(bf16_path_name(p));
  return names;
}
}  // namespace cpu
}  // namespace sgcvq
