"""Class-group sizes that follow demand, and re-seeds that land (issue 24).

docs/method.md §1.2 fixed the size of every class group at construction. Measured (benchmarks/RESULTS.md,
issue 24): at K = 8192 the fixed road group held 3250 codes and the held-out set used 38% of them,
while the varied classes used 93-95% of theirs. Here the groups move codes during training:

* `group_targets`: the sizes that equalise quantization error per code. With D_c(n) ≈ A_c n^(-2/d)
  (high-resolution k-means), one more code in group c saves about (2/d) D_c / n_c, so the sizes
  where no move helps are n_c ∝ D_c, the group's error mass per step (EMA). A move is damped
  (`rate` of the gap each time), since D_c only drops after the receiver's codes have converged.
* `rebalance_permutation`: which codes move (a donor's least used codes: lowest EMA count, ties to
  the lower index) and the stable permutation that keeps every group contiguous. Everything derives
  from buffers that are identical on every rank (the EMA counts and the all-reduced group errors),
  so no broadcast is needed, and the step is a pure function of the state (exact resume).
* `split_targets` + `sample_class_tokens(weights=...)`: a re-seeded (or moved) code of class c goes
  halfway between a token of class c and that token's current code, the token drawn with
  probability ∝ its squared error (k-means++'s D² rule). It splits a loaded, badly fitting cell
  instead of sitting on one random token (which the old re-seeding did, and such codes rarely won
  again).
"""
from __future__ import annotations

import torch

__all__ = ["group_errors", "group_targets", "rebalance_permutation", "split_targets"]


def group_errors(index: torch.Tensor, sqdist: torch.Tensor, code_class: torch.Tensor, num_groups: int) -> torch.Tensor:
    """[C] float32: the summed squared error of the tokens each group's codes took this step.

    index [N] int64 codes, sqdist [N] float32 their squared distances, code_class [K] int64.
    """
    return torch.zeros(num_groups, dtype=torch.float32, device=sqdist.device).index_add_(
        0, code_class[index], sqdist.float())


def group_targets(sizes: list[int], errors: list[float], min_codes: int, rate: float) -> list[int]:
    """New group sizes (summing to sum(sizes)): each group moves `rate` of the way to K · D_c / ΣD.

    sizes: current C group sizes; errors: C non-negative error masses (EMA per step); min_codes: no
    group shrinks below it. Donors give floor(rate · surplus) codes (so a group within one code of
    its target stays put and the sizes settle); the given codes go to the receivers by largest
    remainder of rate · deficit, ties to the lower class: deterministic.
    """
    C, K = len(sizes), sum(sizes)
    total = sum(errors)
    if total <= 0 or C < 2:
        return list(sizes)
    target = [max(float(min_codes), K * e / total) for e in errors]
    give = [min(int(rate * max(0.0, s - t)), max(0, s - min_codes)) for s, t in zip(sizes, target)]
    moved = sum(give)
    if moved == 0:
        return list(sizes)
    want = [rate * max(0.0, t - s) if g == 0 else 0.0 for s, t, g in zip(sizes, target, give)]
    wsum = sum(want)
    if wsum <= 0:
        return list(sizes)
    share = [moved * w / wsum for w in want]
    take = [int(x) for x in share]
    order = sorted(range(C), key=lambda c: (-(share[c] - take[c]), c))
    for i in range(moved - sum(take)):
        take[order[i % C]] += 1
    return [s - g + t for s, g, t in zip(sizes, give, take)]


def rebalance_permutation(cluster_size: torch.Tensor, offsets: torch.Tensor, new_sizes: list[int]):
    """(perm [K] int64, new_offsets [C+1] int64, moved [K] bool) for groups resized to new_sizes.

    cluster_size [K]: EMA counts (the donors give their least used codes); offsets [C+1]: the current
    groups. New position p holds old code perm[p]; moved[p] marks the codes that changed group (to
    be re-seeded in their new group). Codes keep their relative order inside a group.
    """
    K = cluster_size.shape[0]
    dev = cluster_size.device
    old = offsets.tolist()
    C = len(old) - 1
    new_class = torch.repeat_interleave(torch.arange(C, device=dev), offsets[1:] - offsets[:-1])
    moved_codes, receivers = [], []
    for c in range(C):
        size = old[c + 1] - old[c]
        give = size - new_sizes[c]
        if give > 0:
            # NOTE: stable sort on the counts: ties to the lower index, the same on every rank
            order = torch.sort(cluster_size[old[c]:old[c + 1]], stable=True).indices[:give]
            moved_codes.append(order + old[c])
        elif give < 0:
            receivers += [c] * (-give)
    if not moved_codes:
        return torch.arange(K, device=dev), offsets.clone(), torch.zeros(K, dtype=torch.bool, device=dev)
    moved_codes = torch.cat(moved_codes)
    new_class[moved_codes] = torch.tensor(receivers, dtype=torch.int64, device=dev)
    was_moved = torch.zeros(K, dtype=torch.bool, device=dev)
    was_moved[moved_codes] = True
    # stable by (new class, old position): each group contiguous, survivors in their old order
    perm = torch.argsort(new_class * K + torch.arange(K, device=dev))
    new_offsets = torch.zeros(C + 1, dtype=torch.int64, device=dev)
    new_offsets[1:] = torch.cumsum(torch.tensor(new_sizes, dtype=torch.int64, device=dev), 0)
    return perm, new_offsets, was_moved[perm]


def split_targets(xs: torch.Tensor, index: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """[N, D]: the midpoint between each token and its code, where a split of that code's cell puts
    the new code (it takes the tokens on the token's side of the cell, not only the token)."""
    return 0.5 * (xs + codebook[index])
