"""`sgcvq study usage-vs-k` end to end on a seconds-long configuration."""
import json

import pytest

from sgcvq.cli import main
from sgcvq.study import run_usage_vs_k, study_config

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["model.base_channels=8", "model.embed_dim=8", "model.kmeans_iters=1", "model.disc_channels=8",
         "model.disc_layers=1", "data.length=32", "data.eval_length=8", "data.batch_size=4", "data.video_frames=2"]


def test_study_config_sets_the_quantizer_and_k():
    cfg = study_config("cvq", 1024, 7)
    assert (cfg.model.quantizer, cfg.model.codebook_size, cfg.model.num_classes, cfg.train.max_steps) == (
        "cvq", 1024, None, 7)
    sgc = study_config("sgc", 1024, 7)
    assert sgc.model.num_classes == 9 and sgc.model.quantizer == "sgc"


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
