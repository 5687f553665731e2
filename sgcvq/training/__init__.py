"""Training, evaluation and the demo behind `sgcvq train`, `sgcvq eval` and `sgcvq train --demo`.

The demo's names load on first use: `from sgcvq.training import train` does not import the report
machinery (matplotlib, ~0.8 s), which only `run_demo` needs.
"""
from __future__ import annotations

from .evaluate import EvalResult, evaluate
from .loop import Trainer, TrainResult, train

__all__ = ["train", "Trainer", "TrainResult", "evaluate", "EvalResult", "run_demo", "DEMO_STEPS"]


def __getattr__(name: str):
    if name in ("run_demo", "DEMO_STEPS"):
        from . import demo

        return getattr(demo, name)
    raise AttributeError(f"module 'sgcvq.training' has no attribute {name!r}")
