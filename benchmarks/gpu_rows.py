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
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
