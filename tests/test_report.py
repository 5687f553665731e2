"""Reports: every figure, the table and report.html are written and non-empty."""
import csv
import json

import pytest
import torch

from sgcvq.report import write_report
from sgcvq.training.evaluate import EvalResult


pytestmark = pytest.mark.usefixtures("one_thread")


def _result(K=24, C=3, grouped=True):
    counts = torch.randint(0, 20, (K,))
    counts[:2] = 0  # a couple of dead codes
    return EvalResult(
        metrics={"psnr": 21.5, "ssim": 0.71, "active_code_fraction": float((counts > 0).float().mean()),
                 "perplexity": 17.2, "token_purity": 0.8, "temporal_stability": 0.6,
                 **({"group_miou": 0.42} if grouped else {})},
        originals=torch.rand(4, 3, 16, 16) * 2 - 1,
        recons=torch.rand(4, 3, 16, 16) * 2 - 1,
        counts=counts,
        confusion=torch.randint(0, 5, (K, C)),
        codebook=torch.randn(K, 6),
        class_offsets=torch.tensor([0, 8, 16, 24]) if grouped else None,
        class_names=["road", "sky", "car"],
    )


def test_report_files_exist_and_are_not_empty(tmp_path):
    results = {"SGC-VQGAN": _result(), "plain VQ (baseline)": _result(grouped=False)}
    extra = {"SGC-VQGAN": {"train_steps": 10, "skipped_files": 2}, "plain VQ (baseline)": {"train_steps": 10}}
    report = write_report(tmp_path, results, extra, title="t", notes=["a note"])
    html = report.read_text()
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 8  # recon, usage, pca, per-class for each model
    for png in pngs:
        assert png.stat().st_size > 1000, png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"src='{png.name}'" in html
    rows = list(csv.reader(open(tmp_path / "metrics.csv")))
    assert rows[0] == ["metric", "SGC-VQGAN", "plain VQ (baseline)"]
    table = {r[0]: r[1:] for r in rows[1:]}
    assert table["PSNR (dB)"] == ["21.50", "21.50"]
    assert table["group mIoU (label-free)"] == ["0.420", "n/a"]
    assert table["unreadable files skipped"] == ["2", "n/a"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["SGC-VQGAN"]["train_steps"] == 10
    assert "a note" in html and "group mIoU" in html
