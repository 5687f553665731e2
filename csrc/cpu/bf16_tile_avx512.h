// bfloat16 GEMM tiles with AVX512_BF16 dot products (vdpbf16ps), the bf16 search's GEMM where
// the CPU has no AMX (AMD Zen 4/5, Intel Cooper Lake / Ice Lake-SP without AMX).
//
// Operands are the ones the AMX path (oneDNN brgemm) takes, so both paths share the packing:
// A row-major bf16 [mm, lda], B blocks of 64 codes in VNNI-2 layout [Dp/2][64][2]. Products of
// bfloat16 numbers are exact in float32; the accumulation rounds to float32 (DAZ/FTZ, like AMX),
// which the bf16 bound (nearest_code_bf16.cpp) covers.
#pragma once
#include "candidates.h"

#include <c10/util/BFloat16.h>

#include <cstdint>

namespace sgcvq {
namespace cpu {

constexpr int64_t kBf16Block = 64;  // codes per packed block

// True when the CPU has AVX512-F/DQ/BW/VL and AVX512_BF16.
bool cpu_has_avx512_bf16();

// s[t, j] = sum_d a[t, d] b[j, d] for t < mm and j < 64 * blocks (row stride lds floats), from
// a [mm, lda] (lda even, pairs past Dp unused) and `blocks` consecutive packed blocks of 64 codes,
// each [Dp/2][64][2]. Needs cpu_has_avx512_bf16().
// With norms (indexed by code; the tile's first code is kb), s[t, j] also adds norms[kb + j], and
// rowmin[t * 16 ..] (16 lanes, the caller initialises it) takes the lane-wise minimum of those
// values over codes inside [k0, k1), so the scan of the row knows its minimum without a pass.
void bf16_tile_avx512(const c10::BFloat16* a, int64_t lda, int64_t mm, const c10::BFloat16* b, int64_t Dp,
                      int64_t blocks, float* s, int64_t lds, const float* norms = nullptr, int64_t kb = 0,
                      int64_t k0 = 0, int64_t k1 = 0, float* rowmin = nullptr);

// The fused search for small D (Dp <= 16): no tile of products in memory. For tokens t < T (T a
// multiple of 8; rows of a as above), every code k in [k0, k1) whose approximate distance
// norms[k] + a[t].b[k] is below best[t] + margin[t] (best[t] the running minimum, updated here)
// is appended to the token's list idx/val[t * cap ..], count[t] entries (-1 once it overflowed).
// On return every code left out has a value >= best[t] + margin[t]. norms: [Kp], any values past K.
// cells (optional, only for [k0, k1) = every code): each token's best starts from the codes of
// its orthant cell (see SmallSeedCells) instead of the range's first 256 codes.
constexpr int64_t kBf16SmallMaxPairs = 8;
// The codes grouped by the signs of their first min(D, 8) centred bf16 features (an orthant of
// x' space), each cell padded to whole 16-code vectors (+inf norms): the scan seeds a token's best
// with (up to 256 of) the codes of its own orthant, which usually hold its nearest code or one
// near it, so few later codes lower the best or fall within its margin (each such code is a
// mispredicted list entry); also the cell across the token's feature nearest to 0. Only a seed: any codes would be correct, and every code is still
// scanned. pairs: [vectors][Dp / 2][16] bf16 pairs as in the packing; norms: [vectors * 16];
// start: [2^bits + 1], each cell's first vector.
struct SmallSeedCells {
  const uint32_t* pairs = nullptr;
  const float* norms = nullptr;
  const int32_t* start = nullptr;
  int bits = 0;
};
void bf16_small_scan_avx512(const c10::BFloat16* a, int64_t lda, int64_t T, const c10::BFloat16* packed,
                            int64_t Dp, const float* norms, int64_t k0, int64_t k1, const float* margin,
                            float* best, int32_t* count, int32_t* idx, float* val, int32_t cap,
                            const SmallSeedCells* cells = nullptr);

// The same search without a data-dependent branch in the scan (any T; one call per token and code
// range: its results are written, not merged into earlier ones): each token keeps, per lane of 16
// codes, the smallest value and the second smallest (three vector ops per 16 codes next to the
// dot products, see bf16_window_bits); at the end the lane winners below b + margin[t] (b the
// smallest value) join the list; a lane whose second smallest value is below that too is
// searched again (below); a list past cap gets count -1. Tokens
// pay four vector ops per 16 codes more than the branchy scan, but no mispredicted list entries
// (about 45 ns each on an AMD Zen 5, several a token), which is what small code groups need.
// The window's values carry the code's 16-code vector number, relative to k0 / 16, in their low
// bf16_window_bits(k1 - k0) mantissa bits: the lane minimum then brings its code along (no
// compare and blends), at the price of moving each value by less than 2^(bits - 23) of its size,
// which the caller's margin must cover (bf16_bound's value_rel).
// A lane whose second smallest value is below b + margin too (two codes of it near the best: 4% of
// tokens at 1024 codes, D = 8) is searched again on its own from `lanes`, the codes lane by lane:
// every code of it below b + margin joins the list (a few vector ops per 256 codes), instead of
// the whole token going to the float32 search.
struct SmallLaneCodes {
  const uint32_t* pairs = nullptr;  // [ceil(K / 256)][16 lanes][Dp / 2][16]: block b, lane l, j < 16
  const float* norms = nullptr;     // [ceil(K / 256)][16 lanes][16]          is code 16 (16 b + j) + l
};
int bf16_window_bits(int64_t codes);
// Token t's list is written (not appended: nothing is read) as best[t * stride] (b), count[t *
// stride] (its length, -1 past cap) and idx + t * stride (at most cap codes; the values are not
// kept: the caller re-scores every listed code in float32); the three may interleave, as the
// caller's CandLists do. Returns how many lists overflowed.
int64_t bf16_small_window_avx512(const c10::BFloat16* a, int64_t lda, int64_t T, const c10::BFloat16* packed,
                                 int64_t Dp, const float* norms, const SmallLaneCodes& lanes, int64_t k0, int64_t k1,
                                 const float* margin, float* best, int32_t* count, int32_t* idx, int64_t stride,
                                 int32_t cap);

}  // namespace cpu
}  // namespace sgcvq
