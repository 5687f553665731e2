"""The semantic side of the codebook (docs/method.md §1.1-1.3, §1.7-1.8).

* `pool_labels`: token labels from pixel-level label maps by majority vote per f x f cell.
* `group_sizes_for` / `class_offsets_from_sizes` / `code_classes`: the class groups of the codebook.
* `update_class_centers`: the per-class EMA of the mean token (§1.7).
* `sample_class_tokens`: one random token of each code's class (seeds for re-seeding and k-means).

Everything here is vectorised (no Python loops over tokens, cells or codes) and free of host
synchronisation, so it runs inside a training step and under torch.compile.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "pool_labels",
    "group_sizes_for",
    "class_offsets_from_sizes",
    "code_classes",
    "update_class_centers",
    "sample_class_tokens",
]


def pool_labels(labels: torch.Tensor, grid: tuple[int, int], num_classes: int, ignore_label: int = 255,
                min_share: float = 0.0) -> torch.Tensor:
    """Token labels [B, h, w] int64 from pixel label maps [B, h*f, w*f] by majority vote.

    Each token takes the most frequent class among the pixels of its f x f cell; pixels equal to
    `ignore_label` (or, when the caller skipped the value check, outside [0, num_classes)) do not
    vote; a cell without a voting pixel gets -1 (search all codes).
    Ties go to the lowest class index (torch.argmax returns the first maximum).
    min_share: a cell whose winning class holds less than this share of its voting pixels (a
    boundary cell, a blend of classes) gets -1 too; 0 keeps every majority.
    Cost: one scatter-add over the pixels into a [B*h*w, C+1] count table; nothing of size
    pixels x C is materialised.
    """
    B, Hp, Wp = labels.shape
    h, w = grid
    fh, fw = Hp // h, Wp // w
    C = num_classes
    lab = labels.to(torch.int64)
    # ignore pixels (and, when the caller skipped the value check, any value outside [0, C))
    # vote into an extra bin C, which is dropped before the argmax: no out-of-bounds index
    votes_ok = (lab >= 0) & (lab < C) & (lab != ignore_label)
    lab = torch.where(votes_ok, lab, torch.full_like(lab, C))
    cell = (
        torch.arange(B, device=lab.device).view(B, 1, 1, 1, 1) * (h * w)
        + torch.arange(h, device=lab.device).view(1, h, 1, 1, 1) * w
        + torch.arange(w, device=lab.device).view(1, 1, 1, w, 1)
    )  # [B, h, 1, w, 1]; broadcasts over the f x f pixels of each cell
    flat = (cell * (C + 1) + lab.view(B, h, fh, w, fw)).reshape(-1)
    votes = torch.zeros(B * h * w * (C + 1), dtype=torch.int32, device=lab.device)
    votes.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
    votes = votes.view(B * h * w, C + 1)[:, :C]
    winner = votes.argmax(dim=1)  # NOTE: first maximum -> lowest class on ties
    total = votes.sum(dim=1)
    has_vote = total > 0
    if min_share > 0:
        has_vote = has_vote & (votes.gather(1, winner[:, None])[:, 0] >= min_share * total)
    return torch.where(has_vote, winner, torch.full_like(winner, -1)).view(B, h, w)


def group_sizes_for(
    num_classes: int,
    codebook_size: int,
    group_sizes: str | Sequence[int] = "equal",
    class_frequencies: Sequence[float] | torch.Tensor | None = None,
    min_codes_per_class: int = 1,
    alpha: float = 0.5,
) -> list[int]:
    """The number of codes of each class: C ints >= min_codes_per_class summing to codebook_size.

    group_sizes:
        "equal": K // C each, the remainder spread one by one over the first classes;
        "frequency": proportional to class_frequencies ** alpha (alpha = 0.5 damps the head of a
            long-tailed class mix), at least min_codes_per_class each (water-filling: classes that
            would fall under the minimum are pinned to it and the rest is shared again), rounded
            by largest remainder so the sizes sum to K exactly;
        a sequence of C ints: used as given (checked).
    """
    C, K = num_classes, codebook_size
    if isinstance(group_sizes, str):
        if group_sizes == "equal":
            if K < C:
                raise ValueError(f"FastSemanticQuantizer: codebook_size {K} < num_classes {C}: every class needs a code")
            return [K // C + (1 if c < K % C else 0) for c in range(C)]
        if group_sizes != "frequency":
            raise ValueError(
                f"FastSemanticQuantizer: group_sizes must be 'equal', 'frequency' or a list of {C} ints, got {group_sizes!r}"
            )
        return _frequency_sizes(C, K, class_frequencies, min_codes_per_class, alpha)
    sizes = list(group_sizes)
    if len(sizes) != C:
        raise ValueError(f"FastSemanticQuantizer: group_sizes has {len(sizes)} entries but num_classes is {C}")
    for c, s in enumerate(sizes):
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"FastSemanticQuantizer: group_sizes[{c}] must be an int >= 1, got {s!r}")
    if sum(sizes) != K:
        raise ValueError(f"FastSemanticQuantizer: group_sizes sum to {sum(sizes)} but codebook_size is {K}")
    return sizes


def _frequency_sizes(C: int, K: int, class_frequencies, min_codes: int, alpha: float) -> list[int]:
    if class_frequencies is None:
        raise ValueError("FastSemanticQuantizer: group_sizes='frequency' needs class_frequencies (C numbers)")
    freq = [float(f) for f in (class_frequencies.tolist() if isinstance(class_frequencies, torch.Tensor)
                                else class_frequencies)]
    if len(freq) != C:
        raise ValueError(f"FastSemanticQuantizer: class_frequencies has {len(freq)} entries but num_classes is {C}")
    if any(not math.isfinite(f) or f < 0 for f in freq) or sum(freq) <= 0:
        raise ValueError(f"FastSemanticQuantizer: class_frequencies must be finite, >= 0 and not all 0, got {freq}")
    if isinstance(min_codes, bool) or not isinstance(min_codes, int) or min_codes < 1:
        raise ValueError(f"FastSemanticQuantizer: min_codes_per_class must be an int >= 1, got {min_codes!r}")
    if min_codes * C > K:
        raise ValueError(
            f"FastSemanticQuantizer: min_codes_per_class {min_codes} x num_classes {C} > codebook_size {K}"
        )
    weight = [f**alpha for f in freq]
    pinned = [False] * C
    target = [0.0] * C
    while True:  # water-filling: at most C rounds, each pins at least one more class
        free = K - min_codes * sum(pinned)
        wsum = sum(w for w, p in zip(weight, pinned) if not p)
        target = [min_codes if p else (free * w / wsum if wsum > 0 else free / C) for w, p in zip(weight, pinned)]
        newly = [c for c in range(C) if not pinned[c] and target[c] < min_codes]
        if not newly:
            break
        for c in newly:
            pinned[c] = True
    sizes = [max(min_codes, int(math.floor(t))) for t in target]
    rest = K - sum(sizes)
    # largest remainder; ties to the lower class index so the result is deterministic
    order = sorted(range(C), key=lambda c: (-(target[c] - math.floor(target[c])), c))
    for i in range(rest):
        sizes[order[i % C]] += 1
    return sizes


def class_offsets_from_sizes(sizes: Sequence[int]) -> torch.Tensor:
    """[C+1] int64 offsets: class c owns codes [off[c], off[c+1])."""
    off = [0]
    for s in sizes:
        off.append(off[-1] + int(s))
    return torch.tensor(off, dtype=torch.int64)


def code_classes(offsets: torch.Tensor) -> torch.Tensor:
    """[K] int64: the class that owns each code, from offsets [C+1]."""
    sizes = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(sizes.numel(), device=offsets.device), sizes)


def update_class_centers(
    centers: torch.Tensor,
    center_counts: torch.Tensor,
    class_counts: torch.Tensor,
    class_sums: torch.Tensor,
    decay: float,
) -> None:
    """In place EMA of the class centres (docs/method.md §1.7), only for classes present in the batch.

    centers [C, D] float32 (mu_c), center_counts [C] float32 (EMA of the token count per step),
    class_counts [C] / class_sums [C, D] float32: this step's statistics (cluster_stats with
    index = label). A class seen for the first time takes the batch mean directly, so mu_c is not
    biased toward its zero start.
    """
    present = class_counts > 0
    mean = class_sums / class_counts.clamp(min=1.0)[:, None]
    first = present & (center_counts == 0)
    blended = torch.where(first[:, None], mean, decay * centers + (1 - decay) * mean)
    centers.copy_(torch.where(present[:, None], blended, centers))
    counts_blended = torch.where(first, class_counts, decay * center_counts + (1 - decay) * class_counts)
    center_counts.copy_(torch.where(present, counts_blended, center_counts))


def sample_class_tokens(
    x: torch.Tensor,
    token_labels: torch.Tensor | None,
    code_class: torch.Tensor,
    offsets: torch.Tensor,
    generator: torch.Generator | None = None,
    select: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every code, a random token of the code's class; distinct tokens within a group.

    x [N, D] float32 tokens; token_labels [N] int64 in [-1, C) (None: every token is class 0, the
    plain-VQ case with C = 1); code_class [K] int64; offsets [C+1] int64 (class c owns codes
    [offsets[c], offsets[c+1])). Tokens labelled -1 are never picked.

    The tokens of each class are shuffled and the j-th code of group c takes the j-th shuffled
    token of class c (wrapping around when the class has fewer tokens than codes), so two codes
    of a group get the same token only when the class has fewer tokens than the group has codes
    (two codes on one token: the higher index would never win a tie and stay dead).

    select [K] bool (re-seeding: the dead codes): only these codes are counted, the j-th *selected*
    code of group c takes the j-th shuffled token, and a selected code beyond the class's token
    count gets has_token False instead of a token another code of its group already took (two
    codes on one token: the higher index never wins a tie, so it would be re-seeded again and again).

    weights [N] >= 0 (re-seeding by splits, sgcvq/codebook_rebalance.py): tokens are drawn without
    replacement with probability ∝ weight (Efraimidis-Spirakis keys u^(1/w)), e.g. their squared
    error (k-means++'s D² rule); None: uniformly.

    Returns (tokens [K, D] float32, has_token [K] bool); rows whose class has no token are filled
    with some token (or zeros) and must be replaced by the caller where has_token is False.
    """
    N = x.shape[0]
    K = code_class.shape[0]
    C = offsets.shape[0] - 1
    if N == 0:
        return x.new_zeros(K, x.shape[1]), torch.zeros(K, dtype=torch.bool, device=x.device)
    if token_labels is None:
        key = torch.zeros(N, dtype=torch.int64, device=x.device)
    else:
        key = torch.where(token_labels < 0, torch.full_like(token_labels, C), token_labels)
    # class-major order, random within a class (u in [0, 1) never reaches the next class)
    u = torch.rand(N, generator=generator, device=x.device, dtype=torch.float64)
    if weights is not None:
        # the largest u^(1/w) first; kept in [0, 1) so a key never reaches the next class
        w = weights.to(torch.float64).clamp(min=1e-30)
        u = (1.0 - u.pow(1.0 / w)).clamp(max=1.0 - 1e-9)
    order = torch.argsort(key.to(torch.float64) + u)
    per_class = torch.zeros(C + 1, dtype=torch.int64, device=x.device)
    per_class.index_add_(0, key, torch.ones_like(key))
    starts = torch.cumsum(per_class, 0) - per_class
    n = per_class[code_class]
    if select is None:
        rank = torch.arange(K, device=x.device) - offsets[code_class]  # position of the code in its group
        has_token = n > 0
    else:  # position among the group's selected codes
        sel = select.to(torch.int64)
        before = torch.cumsum(sel, 0) - sel
        rank = before - before[offsets[:-1].clamp(max=K - 1)][code_class]
        has_token = rank < n
    pos = (starts[code_class] + torch.remainder(rank, n.clamp(min=1))).clamp(max=N - 1)
    return x[order[pos]], has_token
