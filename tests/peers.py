"""The pinned peers the tests compare against, imported so that a missing or drifted one FAILS.

The versions come from the committed lock file (requirements/test.lock), the one source of truth that
`.ci/run` installs from. A parity test that `importorskip`-ed its peer would turn green when the peer
is missing; one run against another release would fail on arithmetic, not on the cause. Here both
fail at once, naming the package, the version found and the pin (bump pins on purpose with
tools/check_drift.sh, then edit the lock file and the extras in pyproject.toml together).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import pathlib
import re
import warnings

LOCK = pathlib.Path(__file__).resolve().parent.parent / "requirements" / "test.lock"


def pinned_versions(path: pathlib.Path | None = None) -> dict[str, str]:
    """{distribution name (lower case, '-' separated): exact version} from a `name==version` lock file."""
    path = LOCK if path is None else path
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m is None:
            raise ValueError(f"{path.name}: not an exact pin: {line!r}")
        pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def require(module: str, distribution: str):
    """Import `module` (from `distribution`) at exactly the locked version, or raise ImportError."""
    want = pinned_versions().get(distribution)
    if want is None:
        raise ImportError(f"{distribution} is not pinned in {LOCK.name}: pin what the tests compare against")
    try:
        have = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"{distribution}=={want} is a pinned test peer but is not installed: install the test "
                          f"environment from the lock file (`pip install -c requirements/test.lock -e '.[test]'`)") from None
    if have.split("+")[0] != want.split("+")[0]:
        if os.environ.get("SGCVQ_PEERS_UNPINNED") == "1":  # tools/check_drift.sh only, never CI
            warnings.warn(f"{distribution} {have} instead of the pinned {want} (SGCVQ_PEERS_UNPINNED=1)")
            return importlib.import_module(module)
        raise ImportError(f"{distribution} {have} is installed but the tests are pinned to {want}: parity is only "
                          f"checked against the pinned release (tools/check_drift.sh compares a newer one)")
    return importlib.import_module(module)
