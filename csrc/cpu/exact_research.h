// Stage 4 of the CPU search: the exact search of the tokens the certificate could not settle.
#pragma once
#include "certify.h"
#include "collector.h"
#include "search_plan.h"
#include "token_rows.h"

#include <cstdint>
#include <vector>

namespace sgcvq {
namespace cpu {

// For every token i with flagged[i], the first code of its range with the smallest direct float32
// distance (codes in index order: ties to the lowest index; NaN never wins; none finite: the
// range's first code and its NaN distance), written to `out`. Tokens are taken in the plan's
// order, so a class group's tokens share tiles of up to kExactTile tokens, each code row read once
// per tile (cpu::exact_search: the same bits as direct_sqdist per pair).
constexpr int64_t kExactTile = 64;
void exact_research(const SearchPlan& plan, const TokenRows& rows, const FloatCodebook& cb,
                    const std::vector<uint8_t>& flagged, const Answers& out);

// The former re-search, one token at a time over its codes in index order (SGCVQ_CPU_RESEARCH=loop:
// benchmarks, and tests that the tiled search gives the same bits).
void exact_research_one(const float* xr, const FloatCodebook& cb, int64_t lo, int64_t hi, float& bv, int64_t& bi);

}  // namespace cpu
}  // namespace sgcvq
