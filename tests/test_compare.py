"""`sgcvq compare` argument handling (the end-to-end run is in test_cli.py)."""
from sgcvq.cli import main


def test_compare_needs_two_models_and_name_equals_checkpoint(tmp_path, capsys):
    assert main(["compare", "--sgc", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "at least two models" in capsys.readouterr().err
    assert main(["compare", "--model", "VQGAN", "CVQ=x", "--out", str(tmp_path / "r")]) == 2
    assert "NAME=CKPT" in capsys.readouterr().err
