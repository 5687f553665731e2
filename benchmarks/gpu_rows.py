"""pytest plugin for benchmarks/gpu_run.sh: one JSON line per test as it finishes, so a step cut
short by its timeout still returns which tests passed, failed or never ran.

    pytest -p gpu_rows ...   (benchmarks/ on PYTHONPATH; rows go to $SGCVQ_TEST_ROWS)
"""
from __future__ import annotations

import json
import os
import time


def pytest_runtest_logreport(report):
    path = os.environ.get("SGCVQ_TEST_ROWS")
    if not path or (report.when != "call" and report.outcome == "passed"):
        return  # one row per test: its call, or the setup/teardown that failed or skipped it
    row = {"test": report.nodeid, "when": report.when, "outcome": report.outcome,
           "seconds": round(report.duration, 3), "step": os.environ.get("SGCVQ_STEP", ""),
           "at": time.strftime("%H:%M:%S", time.gmtime())}
    if report.outcome == "failed":
        row["error"] = str(report.longrepr)[-1500:]
    elif report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        row["reason"] = str(report.longrepr[-1])[:300]
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


# Skip reasons that mean the step did not test the GPU path at all (no GPU, no extension, no
# Triton): a step with any of these verifies nothing, even with exit status 0.
ENVIRONMENT_SKIPS = ("needs a CUDA GPU", "is not built", "triton is not installed", "Triton needs a GPU",
                     "compute-sanitizer not found")


def step_verified(path: str, step: str) -> tuple[bool, str]:
    """(True, summary) when STEP's rows show passed tests, no failure and no environment skip."""
    rows = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("step") == step:
                rows.append(r)
    passed = sum(r["outcome"] == "passed" for r in rows)
    failed = sum(r["outcome"] == "failed" for r in rows)
    env_skips = [r for r in rows if r["outcome"] == "skipped" and any(k in r.get("reason", "") for k in ENVIRONMENT_SKIPS)]
    ok = passed > 0 and failed == 0 and not env_skips
    return ok, f"{passed} passed, {failed} failed, {len(env_skips)} skipped for want of a GPU path"


if __name__ == "__main__":
    import sys

    ok, summary = step_verified(sys.argv[1], sys.argv[2])
    print(summary)
    sys.exit(0 if ok else 1)
