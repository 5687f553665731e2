"""`sgcvq study usage-vs-k` end to end on a seconds-long configuration."""
import json

import pytest

from sgcvq.cli import main
from sgcvq.study import run_usage_vs_k, scaled_reseeding, study_config, token_class_frequencies

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["model.base_channels=8", "model.embed_dim=8", "model.kmeans_iters=1", "model.disc_channels=8",
         "model.disc_layers=1", "data.length=32", "data.eval_length=8", "data.batch_size=4", "data.video_frames=2"]


def test_study_config_sets_the_quantizer_and_k():
    cfg = study_config("cvq", 1024, 7)
    assert (cfg.model.quantizer, cfg.model.codebook_size, cfg.model.num_classes, cfg.train.max_steps) == (
        "cvq", 1024, None, 7)
    sgc = study_config("sgc", 1024, 7)
    assert sgc.model.num_classes == 9 and sgc.model.quantizer == "sgc"
    # enough held-out tokens to see every code: 2048 scenes of 64 tokens = 16 per code at K = 8192
    assert cfg.data.eval_length == sgc.data.eval_length == 2048
    # the demo's re-seeding at K = 128, scaled at larger K, the same for every quantizer
    assert (cfg.model.threshold_dead, cfg.model.max_idle_steps) == scaled_reseeding(1024, 1024) == (0.0125, 20)
    assert scaled_reseeding(1024, 128) == (0.1, 20) and scaled_reseeding(1024, 8192) == (0.0015625, 40)
    # SGC's groups follow the token frequencies with alpha = 1: every code the same share of tokens
    freqs = token_class_frequencies(sgc.data, sgc.model.downsample_factor, 9)
    sizes = list(sgc.model.group_sizes)
    assert sum(sizes) == 1024 and abs(sum(freqs) - 1) < 1e-9
    for size, f in zip(sizes, freqs):
        assert abs(size - max(2.0, 1024 * f)) <= 2.0 + 0.02 * size


def test_token_frequencies_count_majority_cells_not_pixels():
    cfg = study_config("sgc", 128, 1)
    freqs = token_class_frequencies(cfg.data, cfg.model.downsample_factor, 9, num_images=16)
    pixels = cfg.model.class_frequencies  # the demo's pixel frequencies (64 scenes)
    pole = 3  # CLASS_NAMES: a thin class, the majority of few 4x4 cells
    assert freqs[pole] < 0.5 * pixels[pole]


def test_usage_vs_k_writes_rows_table_and_plot(tmp_path):
    rows = run_usage_vs_k(tmp_path, ks=(20, 32), kinds=("vqgan", "sgc"), steps=2, jobs=1, eval_images=4,
                          overrides=SMALL)
    assert sorted((r["quantizer"], r["K"]) for r in rows) == [("sgc", 20), ("sgc", 32), ("vqgan", 20), ("vqgan", 32)]
    for r in rows:
        assert r["steps"] == 2 and 0 < r["active_eval"] <= 1 and 0 < r["active_train"] <= 1
        # exp(entropy) of the eval counts: at least 1, at most the number of codes those counts used
        assert 1 <= r["perplexity_eval"] <= r["active_eval"] * r["K"] * (1 + 1e-6)
        assert 0 < r["token_purity_label_free"] <= 1
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["rows"]) == 4 and saved["meta"]["steps"] == 2
    table = (tmp_path / "table.md").read_text()
    assert "| VQGAN (taming) | 20 |" in table and "| SGC-VQ | 32 |" in table
    assert (tmp_path / "usage_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_cli_rejects_unknown_quantizers(tmp_path, capsys):
    assert main(["study", "usage-vs-k", "--out", str(tmp_path), "--quantizers", "vq"]) == 2
    assert "quantizer 'vq'" in capsys.readouterr().err
