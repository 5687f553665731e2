// The work unit of a label-sorted nearest_code search, shared by the WMMA kernel
// (nearest_code.cu) and the opt-in Hopper kernel (nearest_code_sm90.cu). Include only CUDA headers.
#pragma once

#include <cstdint>

namespace sgcvq::gpu {

// Sorted token positions [p0, p_end) and the code range [lo, hi) of one block.
struct TileWork {
  int p0, p_end, lo, hi;
};

// Block `tile` of `tile_m` tokens. C == 0: consecutive tokens against every code. Otherwise the
// tokens are sorted into buckets b = label + 1 (bucket 0 = label -1: every code); bucket_start
// [C + 2] is each bucket's first sorted position and tile_start [C + 2] its first tile. Returns
// false for a tile past the last one (the grid is an upper bound: no host sync to size it).
__device__ __forceinline__ bool label_tile_work(int tile, int tile_m, int N, int K, int C,
                                                const int32_t* __restrict__ offsets,       // [C + 1]
                                                const int32_t* __restrict__ bucket_start,  // [C + 2]
                                                const int32_t* __restrict__ tile_start,    // [C + 2]
                                                TileWork& w) {
  if (C == 0) {
    w.p0 = tile * tile_m;
    w.p_end = min(N, w.p0 + tile_m);
    w.lo = 0;
    w.hi = K;
    return true;
  }
  if (tile >= tile_start[C + 1]) return false;
  // The last bucket b with tile_start[b] <= tile owns it (tile_start[b + 1] > tile then holds).
  int b = 0, top = C + 1;
  while (top - b > 1) {
    const int mid = (b + top) / 2;
    if (tile_start[mid] <= tile) b = mid; else top = mid;
  }
  w.p0 = bucket_start[b] + (tile - tile_start[b]) * tile_m;
  w.p_end = min(bucket_start[b + 1], w.p0 + tile_m);
  w.lo = b == 0 ? 0 : offsets[b - 1];
  w.hi = b == 0 ? K : offsets[b];
  return true;
}

}  // namespace sgcvq::gpu
