"""Training logs: a CSV file and TensorBoard, both cut back to the resumed step on --resume."""
from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["RunLog"]


class RunLog:
    """Writes scalar rows to `<out>/train_log.csv` and `<out>/tensorboard/` (rank 0 only).

    On resume from step s, CSV rows after s (written by the killed run after its last checkpoint)
    are dropped and TensorBoard events after s are purged, so the logs read like one clean run.
    """

    def __init__(self, out_dir: Path, csv_enabled: bool, tensorboard: bool, resume_step: int | None):
        self.csv_path = Path(out_dir) / "train_log.csv" if csv_enabled else None
        self.rows: list[dict] = []
        self.fields: list[str] | None = None
        if self.csv_path is not None and resume_step is not None and self.csv_path.exists():
            with open(self.csv_path, newline="") as fh:
                reader = csv.DictReader(fh)
                self.fields = reader.fieldnames
                kept = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
            self._rewrite(kept)
        elif self.csv_path is not None and self.csv_path.exists():
            self.csv_path.unlink()
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"),
                                    purge_step=resume_step + 1 if resume_step is not None else None)

    def _rewrite(self, rows):
        with open(self.csv_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields or ["step"])
            writer.writeheader()
            writer.writerows(rows)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in scalars.items()}}
        if self.csv_path is not None:
            if self.fields is None or not self.csv_path.exists():
                self.fields = list(row)
                self._rewrite([])
            extra = [k for k in row if k not in self.fields]
            if extra:  # a metric that appears later (e.g. the disc loss after disc_start)
                with open(self.csv_path, newline="") as fh:
                    old = list(csv.DictReader(fh))
                self.fields = self.fields + extra
                self._rewrite(old)
            with open(self.csv_path, "a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self.fields).writerow(row)
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, float(v), step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.tb is not None:
            self.tb.add_text(tag, text, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
