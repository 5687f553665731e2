"""Re-seeding takes distinct tokens for the dead codes of a group (sgcvq.semantic.sample_class_tokens(select=...))."""
import pytest
import torch

from sgcvq import FastSemanticQuantizer
from sgcvq.semantic import class_offsets_from_sizes, code_classes, sample_class_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("sizes,n_tokens,p_dead", [([7, 3, 11], 13, 0.5), ([1, 9], 5, 0.9), ([4, 4, 4, 4], 64, 0.3)])
def test_selected_codes_take_distinct_tokens_of_their_class(sizes, n_tokens, p_dead):
    torch.manual_seed(sum(sizes) + n_tokens)
    offsets = class_offsets_from_sizes(sizes)
    C, K = len(sizes), sum(sizes)
    code_class = code_classes(offsets)
    x = torch.randn(n_tokens, 5)
    labels = torch.randint(-1, C, (n_tokens,))
    select = torch.rand(K) < p_dead
    seeds, has_token = sample_class_tokens(x, labels, code_class, offsets, select=select)
    for c in range(C):
        in_class = x[labels == c]
        codes = torch.nonzero(select & (code_class == c)).squeeze(1)
        # the first min(#selected, #tokens) selected codes get a token, the rest none
        assert has_token[codes].tolist() == [j < in_class.shape[0] for j in range(codes.numel())]
        taken = seeds[codes[has_token[codes]]]
        for row in taken:
            assert (row == in_class).all(dim=1).any()  # a token of the code's class
        assert torch.unique(taken, dim=0).shape[0] == taken.shape[0]  # no two codes on one token


def test_without_select_every_code_of_a_present_class_has_a_token():
    offsets = class_offsets_from_sizes([6, 2])
    x = torch.randn(5, 3)
    labels = torch.tensor([0, 0, 1, 1, 1])
    seeds, has_token = sample_class_tokens(x, labels, code_classes(offsets), offsets)
    assert has_token.all()  # k-means start: the group of class 0 wraps around its 2 tokens
    assert torch.unique(seeds[:6], dim=0).shape[0] == 2


def test_reseeding_never_puts_two_dead_codes_on_one_token():
    # a rare class: 2 tokens a batch for a group of 6 codes; before the fix the dead codes of the
    # group took tokens by their position in the group, so 3 codes shared each token and 4 of them
    # could never win one
    torch.manual_seed(3)
    D, sizes = 4, [2, 6]
    vq = FastSemanticQuantizer(D, sum(sizes), num_classes=2, group_sizes=sizes, threshold_dead=1e9, max_idle_steps=0)
    x = torch.randn(1, 20, D)
    labels = torch.zeros(1, 20, dtype=torch.int64)
    labels[0, :2] = 1
    vq(x, labels)  # k-means start, then every code dead: re-seeded
    group1 = vq.codebook[2:]
    assert torch.unique(group1, dim=0).shape[0] == 6  # two tokens, four centre-plus-noise seeds
    tokens1 = x[0, :2]
    on_token = (group1[:, None] == tokens1[None]).all(-1).any(1)
    assert int(on_token.sum()) == 2
