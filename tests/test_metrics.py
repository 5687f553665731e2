"""Metrics on hand-made cases with known answers."""
import math

import pytest
import torch

from sgcvq.metrics import (TokenizerMetrics, active_code_fraction, code_class_confusion, code_counts,
                           group_class_of_codes, group_iou, perplexity, per_class_usage,
                           pixel_to_token_labels, psnr, ssim, temporal_stability, token_purity)


def test_psnr_known_value():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    y = x + 0.1  # mse = 0.01 everywhere, data range 2 -> 10 log10(4 / 0.01) = 26.0206 dB
    assert torch.allclose(psnr(y, x), torch.full((2,), 10 * math.log10(400.0)), atol=1e-4)
    assert torch.isinf(psnr(x, x)).all()


def test_psnr_shape_mismatch_names_both():
    with pytest.raises(ValueError, match="pred is"):
        psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_ssim_identical_is_one_and_noise_lowers_it():
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.ones(3))
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    s = ssim(noisy, x)
    assert (s < 0.9).all() and (s > -1).all()
    # A constant offset hurts luminance only a little; SSIM ranks it above heavy noise.
    assert (ssim(x + 0.05, x) > s).all()


def test_ssim_matches_closed_form_for_constant_images():
    # Constant images: variances and covariance are 0, SSIM = (2ab + c1) / (a^2 + b^2 + c1), with
    # a, b the values shifted to [0, 2] (black = -1 -> 0).
    a, b = 0.2, -0.4
    c1 = (0.01 * 2.0) ** 2
    sa, sb = a + 1, b + 1
    expect = (2 * sa * sb + c1) / (sa * sa + sb * sb + c1)
    got = ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b))
    assert got.item() == pytest.approx(expect, rel=1e-5)


def test_code_usage_metrics():
    idx = torch.tensor([[0, 0, 1, 3]])
    counts = code_counts(idx, 5)
    assert counts.tolist() == [2, 1, 0, 1, 0]
    assert active_code_fraction(counts) == pytest.approx(3 / 5)
    # p = (1/2, 1/4, 1/4): H = 1.5 bits -> perplexity 2^1.5
    assert perplexity(counts) == pytest.approx(2**1.5)
    assert perplexity(torch.ones(7, dtype=torch.int64)) == pytest.approx(7.0)
    usage = per_class_usage(counts, torch.tensor([0, 2, 5]))
    assert usage["active"].tolist() == pytest.approx([1.0, 1 / 3])
    assert usage["tokens"].tolist() == pytest.approx([0.75, 0.25])


def test_purity_and_group_miou_constructed_case():
    # K = 4 codes, 2 classes; group 0 = codes {0, 1}, group 1 = codes {2, 3}.
    offsets = torch.tensor([0, 2, 4])
    idx = torch.tensor([0, 0, 1, 2, 2, 3, 1, 0])
    lab = torch.tensor([0, 0, 0, 1, 1, 1, 1, -1])  # last token ignored
    conf = code_class_confusion(idx, lab, 4, 2)
    assert conf.tolist() == [[2, 0], [1, 1], [0, 2], [0, 1]]
    # Majority per code: 0->0 (2 of 2), 1->tie (1), 2->1 (2), 3->1 (1): 6 of 7 labelled tokens.
    assert token_purity(conf) == pytest.approx(6 / 7)
    assert group_class_of_codes(offsets, 4).tolist() == [0, 0, 1, 1]
    # pred class: [0,0,0,1,1,1,0]; label: [0,0,0,1,1,1,1].
    # class 0: inter 3, union 4; class 1: inter 3, union 4.
    iou = group_iou(conf, offsets)
    assert iou.tolist() == pytest.approx([0.75, 0.75])


def test_group_iou_absent_class_is_nan():
    conf = torch.tensor([[3, 0, 0], [0, 0, 0], [0, 0, 2]])
    iou = group_iou(conf, torch.tensor([0, 1, 2, 3]))
    assert iou[0] == 1.0 and iou[2] == 1.0 and math.isnan(iou[1])


def test_temporal_stability_restricted_to_same_class():
    idx = torch.tensor([[[[1, 2]], [[1, 3]], [[1, 3]]]])  # [B=1, T=3, h=1, w=2]
    assert temporal_stability(idx) == pytest.approx(3 / 4)
    lab = torch.tensor([[[[0, 1]], [[0, 2]], [[0, 2]]]])  # position 1 changes class between frames 0 and 1
    assert temporal_stability(idx, lab) == pytest.approx(3 / 3)
    m = TokenizerMetrics(4, None, 3)
    m.update_video(idx, lab)
    assert m.summary()["temporal_stability"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="T>=2"):
        temporal_stability(idx[:, :1])


def test_pixel_to_token_labels_majority_and_ignore():
    lab = torch.full((1, 4, 4), 255)
    lab[0, :2, :2] = torch.tensor([[1, 1], [2, 255]])  # majority 1
    lab[0, :2, 2:] = torch.tensor([[2, 1], [255, 255]])  # tie 1 vs 2 -> lower class
    tok = pixel_to_token_labels(lab, 2, 3)
    assert tok.tolist() == [[[1, 1], [-1, -1]]]


def test_tokenizer_metrics_summary():
    m = TokenizerMetrics(4, torch.tensor([0, 2, 4]), 2)
    x = torch.rand(2, 3, 16, 16) * 1.6 - 0.8  # x + 0.1 stays inside [-1, 1] (recon is clamped)
    idx = torch.tensor([[[0, 2], [1, 3]], [[0, 2], [0, 2]]])
    lab = torch.tensor([[[0, 1], [0, 1]], [[0, 1], [0, -1]]])
    m.update(x, x + 0.1, idx, lab)
    s = m.summary()
    assert s["psnr"] == pytest.approx(10 * math.log10(400.0), abs=1e-3)
    assert s["active_code_fraction"] == 1.0
    assert s["token_purity"] == 1.0 and s["group_miou"] == 1.0
    assert s["per_class_active"] == [1.0, 1.0]
