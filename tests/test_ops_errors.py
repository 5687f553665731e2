"""Every bad input gets an error that names the argument (sgcvq/ops.py validates before dispatch),
and the C++ kernels' own TORCH_CHECKs catch what reaches them unvalidated."""
from __future__ import annotations

import re

import pytest
import torch

import sgcvq

N, K, D = 6, 5, 4
OFFSETS = [0, 2, 2, 5]  # C = 3 classes; class 1 owns no codes


def sample_inputs() -> dict:
    """Valid inputs for all three ops; each case below breaks one thing."""
    counts = torch.rand(K) * 4
    return {
        "x": torch.randn(N, D),
        "codebook": torch.randn(K, D),
        "labels": torch.tensor([0, -1, 2, 2, 0, -1]),
        "offsets": torch.tensor(OFFSETS),
        "index": torch.randint(K, (N,)),
        "ema": [torch.rand(K) + 1, torch.randn(K, D), torch.randn(K, D), counts, torch.randn(K, D)],
    }


def nearest_code(**changes):
    a = sample_inputs()
    a.update(changes)
    kw = {k: a[k] for k in ("mode", "backend", "check") if k in a}
    return lambda: sgcvq.nearest_code(a["x"], a["codebook"], a["labels"], a["offsets"], **kw)


def cluster_stats(K_arg=K, **changes):
    a = sample_inputs()
    a.update(changes)
    return lambda: sgcvq.cluster_stats(a["index"], a["x"], K_arg)


def ema_update(decay=0.99, eps=1e-5, **changes):
    a = sample_inputs()
    names = ("cluster_size", "embed_sum", "codebook", "counts", "sums")
    tensors = dict(zip(names, a["ema"]))
    tensors.update(changes)
    return lambda: sgcvq.ema_update(*tensors.values(), decay, eps)


def nan_at(t: torch.Tensor, value=float("nan")) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[3] = value
    return t


META = "meta"
CASES = [
    # ---- nearest_code ---------------------------------------------------------------------
    ("x-1d", nearest_code(x=torch.randn(N)), ValueError, "nearest_code: x must be 2-D [rows, D], got shape [6]"),
    ("codebook-3d", nearest_code(codebook=torch.randn(2, K, D)), ValueError,
     "nearest_code: codebook must be 2-D [rows, D], got shape [2, 5, 4]"),
    ("D-mismatch", nearest_code(x=torch.randn(4096, 64), codebook=torch.randn(1024, 65), labels=None, offsets=None),
     ValueError, "nearest_code: x is [4096, 64] but codebook is [1024, 65]: D must match"),
    ("dtype-mismatch", nearest_code(codebook=torch.randn(K, D, dtype=torch.float16)), TypeError,
     "nearest_code: x is torch.float32 but codebook is torch.float16: dtypes must match"),
    ("device-mismatch", nearest_code(codebook=torch.randn(K, D, device=META)), ValueError,
     "nearest_code: x is on cpu but codebook is on meta"),
    ("integer-x", nearest_code(x=torch.randint(9, (N, D))), TypeError,
     "nearest_code: x must be float32, bfloat16 or float16, got torch.int64"),
    ("float64-codebook", nearest_code(codebook=torch.randn(K, D, dtype=torch.float64)), TypeError,
     "nearest_code: codebook must be float32, bfloat16 or float16, got torch.float64"),
    ("x-not-a-tensor", nearest_code(x=[[0.0] * D] * N), TypeError, "nearest_code: x must be a torch.Tensor, got list"),
    ("K=0", nearest_code(codebook=torch.randn(0, D), labels=None, offsets=None), ValueError,
     "nearest_code: codebook is empty (K = 0)"),
    ("labels-without-offsets", nearest_code(offsets=None), ValueError,
     "nearest_code: labels and offsets go together: pass both or neither"),
    ("offsets-without-labels", nearest_code(labels=None), ValueError,
     "nearest_code: labels and offsets go together: pass both or neither"),
    ("labels-too-high", nearest_code(labels=torch.tensor([0, 3, 2, 2, 0, -1])), ValueError,
     "nearest_code: labels must be in [-1, 3) (-1 = search all codes), found 3"),
    ("labels-below-minus-1", nearest_code(labels=torch.tensor([0, -2, 2, 2, 0, -1])), ValueError,
     "nearest_code: labels must be in [-1, 3) (-1 = search all codes), found -2"),
    ("labels-shape", nearest_code(labels=torch.zeros(N + 1, dtype=torch.int64)), ValueError,
     "nearest_code: labels must be [N] = [6], got shape [7]"),
    ("labels-dtype", nearest_code(labels=torch.zeros(N)), TypeError,
     "nearest_code: labels must be int32 or int64, got torch.float32"),
    ("labels-device", nearest_code(labels=torch.zeros(N, dtype=torch.int64, device=META)), ValueError,
     "nearest_code: labels (meta) and offsets (cpu) must be on x's device cpu"),
    ("offsets-decreasing", nearest_code(offsets=torch.tensor([0, 3, 2, 5])), ValueError,
     "nearest_code: offsets must be non-decreasing, but offsets[1] = 3 > offsets[2] = 2"),
    ("offsets-not-ending-at-K", nearest_code(offsets=torch.tensor([0, 2, 2, 4])), ValueError,
     "nearest_code: offsets must start at 0 and end at K = 5, got 0 .. 4"),
    ("offsets-not-starting-at-0", nearest_code(offsets=torch.tensor([1, 2, 2, 5])), ValueError,
     "nearest_code: offsets must start at 0 and end at K = 5, got 1 .. 5"),
    ("offsets-too-short", nearest_code(offsets=torch.tensor([5])), ValueError,
     "nearest_code: offsets must be [C+1] with C >= 1, got shape [1]"),
    ("offsets-dtype", nearest_code(offsets=torch.tensor(OFFSETS, dtype=torch.float32)), TypeError,
     "nearest_code: offsets must be int32 or int64, got torch.float32"),
    ("label-on-empty-group", nearest_code(labels=torch.tensor([0, 1, 2, 2, 0, -1])), ValueError,
     "nearest_code: label 1 points to an empty code group (offsets give it 0 codes)"),
    ("nan-x", nearest_code(x=nan_at(torch.randn(N, D))), ValueError, "nearest_code: x contains NaN or Inf"),
    ("nan-x-unlabelled", nearest_code(x=nan_at(torch.randn(N, D)), labels=None, offsets=None), ValueError,
     "nearest_code: x contains NaN or Inf"),
    ("inf-codebook-unlabelled", nearest_code(codebook=nan_at(torch.randn(K, D), float("inf")), labels=None,
                                             offsets=None), ValueError, "nearest_code: codebook contains NaN or Inf"),
    ("bad-mode", nearest_code(mode="fast"), ValueError,
     "nearest_code: mode must be one of ('exact', 'fast_exact', 'exact_fp32'), got 'fast'"),
    ("bad-backend", nearest_code(backend="gpu"), ValueError,
     "sgcvq: backend must be one of ('auto', 'reference', 'cpu', 'cuda', 'triton'), got 'gpu'"),
    # ---- cluster_stats --------------------------------------------------------------------
    ("index-too-high", cluster_stats(index=torch.tensor([0, 1, 5, 2, 0, 1])), ValueError,
     "cluster_stats: index must be in [0, 5), found 5"),
    ("index-negative", cluster_stats(index=torch.tensor([0, -1, 4, 2, 0, 1])), ValueError,
     "cluster_stats: index must be in [0, 5), found -1"),
    ("index-dtype", cluster_stats(index=torch.zeros(N, dtype=torch.int32)), TypeError,
     "cluster_stats: index must be int64, got torch.int32"),
    ("index-shape", cluster_stats(index=torch.zeros(N - 1, dtype=torch.int64)), ValueError,
     "cluster_stats: index must be [N] = [6], got shape [5]"),
    ("index-device", cluster_stats(index=torch.zeros(N, dtype=torch.int64, device=META)), ValueError,
     "cluster_stats: index is on meta but x is on cpu"),
    ("K=0", cluster_stats(K_arg=0), ValueError, "cluster_stats: K must be a positive int, got 0"),
    ("K-negative", cluster_stats(K_arg=-3), ValueError, "cluster_stats: K must be a positive int, got -3"),
    ("K-bool", cluster_stats(K_arg=True), ValueError, "cluster_stats: K must be a positive int, got True"),
    ("K-float", cluster_stats(K_arg=5.0), ValueError, "cluster_stats: K must be a positive int, got 5.0"),
    ("integer-x", cluster_stats(x=torch.ones(N, D, dtype=torch.int32)), TypeError,
     "cluster_stats: x must be float32, bfloat16 or float16, got torch.int32"),
    ("nan-x", cluster_stats(x=nan_at(torch.randn(N, D))), ValueError, "cluster_stats: x contains NaN or Inf"),
    # ---- ema_update -----------------------------------------------------------------------
    ("float64-buffer", ema_update(codebook=torch.randn(K, D, dtype=torch.float64)), TypeError,
     "ema_update: codebook must be float32, got torch.float64"),
    ("bf16-counts", ema_update(counts=torch.rand(K, dtype=torch.bfloat16)), TypeError,
     "ema_update: counts must be float32, got torch.bfloat16"),
    ("codebook-shape", ema_update(codebook=torch.randn(K, D + 1)), ValueError,
     "ema_update: codebook [5, 5] and sums [5, 4] must match embed_sum [5, 4]"),
    ("sums-shape", ema_update(sums=torch.randn(K + 1, D)), ValueError,
     "ema_update: codebook [5, 4] and sums [6, 4] must match embed_sum [5, 4]"),
    ("embed_sum-1d", ema_update(embed_sum=torch.randn(K)), ValueError,
     "ema_update: embed_sum must be [K, D], got shape [5]"),
    ("cluster_size-shape", ema_update(cluster_size=torch.rand(K + 1)), ValueError,
     "ema_update: cluster_size [6] and counts [5] must be [K] = [5]"),
    ("counts-shape", ema_update(counts=torch.rand(K, 1)), ValueError,
     "ema_update: cluster_size [5] and counts [5, 1] must be [K] = [5]"),
    ("device-mismatch", ema_update(counts=torch.rand(K, device=META)), ValueError,
     "ema_update: counts is on meta but embed_sum is on cpu"),
    ("decay>1", ema_update(decay=1.5), ValueError, "ema_update: decay must be in [0, 1], got 1.5"),
    ("decay<0", ema_update(decay=-0.1), ValueError, "ema_update: decay must be in [0, 1], got -0.1"),
    ("eps<0", ema_update(eps=-1e-5), ValueError, "ema_update: eps must be >= 0, got -1e-05"),
    ("buffer-not-a-tensor", ema_update(cluster_size=[1.0] * K), TypeError,
     "ema_update: cluster_size must be a torch.Tensor, got list"),
]


def case_id(case) -> str:
    """'<op>-<what is wrong>', the op read off the builder that made the call."""
    return f"{case[1].__qualname__.split('.')[0]}-{case[0]}"


@pytest.mark.parametrize("op_call,exc,message", [c[1:] for c in CASES], ids=[case_id(c) for c in CASES])
def test_bad_input_is_rejected_with_a_clear_message(op_call, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        op_call()


def test_ema_update_rejects_non_contiguous_buffers():
    # The buffers are updated in place, so a strided view cannot stand in for them.
    a = sample_inputs()["ema"]
    a[2] = torch.randn(D, K).t()
    with pytest.raises(ValueError, match=re.escape("ema_update: codebook is updated in place and must be contiguous")):
        sgcvq.ema_update(*a, 0.9, 1e-5)


def test_value_checks_are_skipped_with_check_false():
    # check=False trusts the values (no host sync); a NaN token still gets an index in range.
    x = nan_at(torch.randn(N, D))
    index, sqdist = sgcvq.nearest_code(x, torch.randn(K, D), check=False)
    assert ((index >= 0) & (index < K)).all()
    assert not torch.isfinite(sqdist).all()


# --------------------------------------------------------------------------------------------
# The C++ kernels' own checks (torch.ops.sgcvq.* directly, and check=False, skip the Python layer)
# --------------------------------------------------------------------------------------------
def raw_nearest_code(**changes):
    a = sample_inputs()
    a.update(changes)
    return lambda: torch.ops.sgcvq.nearest_code(a["x"], a["codebook"], a["labels"], a["offsets"], "exact")


KERNEL_CASES = [
    ("labels-too-high", raw_nearest_code(labels=torch.tensor([0, 2, 3, 2, 0, -1])),
     "nearest_code: labels must be in [-1, 3), but labels[2] = 3"),
    ("labels-below-minus-1", raw_nearest_code(labels=torch.tensor([0, -1, 2, -5, 0, -1])),
     "nearest_code: labels must be in [-1, 3), but labels[3] = -5"),
    ("label-on-empty-group", raw_nearest_code(labels=torch.tensor([0, 2, 2, 2, 1, -1])),
     "nearest_code: labels[4] = 1 points to an empty code group"),
    ("offsets-decreasing", raw_nearest_code(offsets=torch.tensor([0, 3, 2, 5])),
     "nearest_code: offsets must be non-decreasing, but offsets[1] = 3 > offsets[2] = 2"),
    ("offsets-not-ending-at-K", raw_nearest_code(offsets=torch.tensor([0, 2, 2, 7])),
     "nearest_code: offsets must start at 0 and end at K = 5, got 0 .. 7"),
    ("labels-without-offsets", raw_nearest_code(offsets=None),
     "nearest_code: labels and offsets go together: pass both or neither"),
    ("D-mismatch", raw_nearest_code(codebook=torch.randn(K, D + 1)),
     "nearest_code: x is [6, 4] but codebook is [5, 5]: D must match"),
    ("dtype-mismatch", raw_nearest_code(codebook=torch.randn(K, D).half()),
     "nearest_code: x is Float but codebook is Half: dtypes must match"),
    ("K=0", raw_nearest_code(codebook=torch.randn(0, D), labels=None, offsets=None),
     "nearest_code: codebook is empty (K = 0)"),
    ("bad-mode", lambda: torch.ops.sgcvq.nearest_code(torch.randn(N, D), torch.randn(K, D), None, None, "fast"),
     "nearest_code: mode must be 'exact', 'fast_exact' or 'exact_fp32', got 'fast'"),
    ("cluster_stats-index-out-of-range",
     lambda: torch.ops.sgcvq.cluster_stats(torch.tensor([0, 1, 7, 2, 0, 1]), torch.randn(N, D), K, False),
     "cluster_stats: index must be in [0, 5), but index[2] = 7"),
    ("cluster_stats-K=0",
     lambda: torch.ops.sgcvq.cluster_stats(torch.zeros(N, dtype=torch.int64), torch.randn(N, D), 0, False),
     "cluster_stats: K must be positive, got 0"),
    ("ema_update-float64", lambda: torch.ops.sgcvq.ema_update(
        torch.rand(K), torch.randn(K, D), torch.randn(K, D).double(), torch.rand(K), torch.randn(K, D), 0.9, 1e-5),
     "ema_update: every tensor must be float32, got Double"),
]


@pytest.mark.parametrize("call,message", [c[1:] for c in KERNEL_CASES], ids=[c[0] for c in KERNEL_CASES])
def test_kernel_checks(call, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        call()


def test_kernel_checks_labels_when_python_checks_are_off():
    # check=False skips the Python value checks; the CPU kernel still refuses a bad label.
    with pytest.raises(RuntimeError, match=re.escape("nearest_code: labels must be in [-1, 3), but labels[0] = 9")):
        sgcvq.nearest_code(torch.randn(N, D), torch.randn(K, D), torch.tensor([9, 0, 0, 0, 0, 0]),
                           torch.tensor(OFFSETS), check=False)
