"""Reports: every figure, the table and report.html are written and non-empty."""
import csv
import json
from html import escape as html_escape

import pytest
import torch

from sgcvq.report import FIGURES, codebook_pca, codebook_tsne, per_class_counts, write_report
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
    drawn = len(FIGURES) - (0 if _has_sklearn() else 1)  # t-SNE needs scikit-learn
    assert len(pngs) == 2 * drawn
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


def _has_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def test_report_has_one_section_per_figure_with_a_caption(tmp_path):
    results = {"SGC": _result(), "VQGAN": _result(grouped=False), "CVQ": _result(grouped=False)}
    html = write_report(tmp_path, results).read_text()
    for key, heading, caption, _ in FIGURES:
        start = html.index(f"<section id='{key}'>")
        section = html[start:html.index("</section>", start)]
        assert f"<h2>{heading}</h2>" in section
        assert html_escape(caption) in section
        assert section.count("<figure>") == 3  # the models side by side
        for name in results:
            assert f"<figcaption>{name}</figcaption>" in section


def test_tsne_section_says_how_to_get_scikit_learn_when_missing(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    html = write_report(tmp_path, {"SGC": _result()}).read_text()
    assert "pip install scikit-learn" in html
    assert not (tmp_path / "tsne_sgc.png").exists()
    assert (tmp_path / "pca_sgc.png").exists()


def test_codebook_pca_separates_two_clusters():
    # two well-separated groups of codes: the first principal axis splits them
    a = torch.randn(20, 8) * 0.1 + 3.0
    b = torch.randn(20, 8) * 0.1 - 3.0
    xy = codebook_pca(torch.cat([a, b]))
    assert xy.shape == (40, 2)
    first = xy[:, 0]
    assert bool((first[:20] > 0).all() == (first[20:] < 0).all())
    assert float(first[:20].mean() * first[20:].mean()) < 0


@pytest.mark.skipif(not _has_sklearn(), reason="scikit-learn not installed")
def test_codebook_tsne_keeps_clusters_apart():
    a = torch.randn(30, 8) * 0.1 + 3.0
    b = torch.randn(30, 8) * 0.1 - 3.0
    xy = codebook_tsne(torch.cat([a, b]))
    ca, cb = xy[:30].mean(0), xy[30:].mean(0)
    spread = max(xy[:30].std(0).max(), xy[30:].std(0).max())
    assert float((ca - cb).norm()) > 3 * float(spread)


def test_per_class_counts_read_groups_and_majority_classes():
    res = _result(K=6, C=3)
    res.counts = torch.tensor([0, 5, 2, 0, 0, 7])
    res.class_offsets = torch.tensor([0, 2, 4, 6])
    assert per_class_counts(res) == ([2, 2, 2], [1, 1, 1], [5, 2, 7])
    res.class_offsets = None  # no groups: a code counts for the majority class of its tokens
    res.confusion = torch.tensor([[3, 0, 0], [0, 4, 0], [0, 4, 0], [0, 0, 0], [1, 0, 0], [0, 0, 9]])
    assert per_class_counts(res) == ([2, 2, 1], [0, 2, 1], [0, 7, 7])
