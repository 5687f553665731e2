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


def test_extras_pin_the_locked_peers():
    """The test and bench extras pin each peer the tests and benchmarks compare with, at the version
    of the committed lock file that CI installs from (one bump changes both, on purpose)."""
    import re

    from peers import pinned_versions

    lock = pinned_versions()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, peers in (("test", ("vector-quantize-pytorch", "triton")),
                         ("bench", ("vector-quantize-pytorch", "faiss-cpu"))):
        pins = {}
        for req in extras[extra]:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)", req)
            if m:
                pins[m.group(1).lower()] = m.group(2)
        for peer in peers:
            assert pins.get(peer) == lock[peer], f"[{extra}] pins {peer} at {pins.get(peer)}, the lock at {lock[peer]}"
    assert lock["torch"] == "2.13.0"
