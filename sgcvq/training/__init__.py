"""Training, evaluation and the demo behind `sgcvq train`, `sgcvq eval` and `sgcvq train --demo`."""
from .demo import DEMO_STEPS, run_demo
from .evaluate import EvalResult, evaluate
from .loop import Trainer, TrainResult, train

__all__ = ["train", "Trainer", "TrainResult", "evaluate", "EvalResult", "run_demo", "DEMO_STEPS"]
