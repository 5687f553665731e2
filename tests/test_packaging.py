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


def test_the_library_imports_none_of_the_training_extra():
    """`import sgcvq` (ops, quantizer, compat drop-ins) must work with the core dependencies alone:
    the training application's (the `train` extra) are imported only by the trainer, data, reports
    and the command line, and the library imports no module of the application."""
    import subprocess
    import sys

    app = ("sgcvq.model", "sgcvq.data", "sgcvq.training", "sgcvq.report", "sgcvq.cli", "sgcvq.config",
           "sgcvq.study", "sgcvq.metrics", "sgcvq.checkpoint", "sgcvq.tokenizer_io", "sgcvq.prior")
    code = ("import sys; import sgcvq, sgcvq.compat, sgcvq.quantizer, sgcvq.reference; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('yaml', 'matplotlib', 'PIL', 'tensorboard') "
            f"or m.startswith({app!r})); "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"the library imported: {done.stdout} {done.stderr[-2000:]}"
