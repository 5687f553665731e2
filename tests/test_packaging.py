"""The package list in pyproject.toml must name every subpackage, or a non-editable install breaks."""
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_subpackage():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "sgcvq").rglob("__init__.py")
    }
    found.add("sgcvq.kernels")
    assert found == listed, f"pyproject.toml packages {sorted(listed)} != subpackages on disk {sorted(found)}"
    assert config["package-dir"]["sgcvq.kernels"] == "kernels"
