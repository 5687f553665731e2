"""Issue 24: training-batch PSNR against steps (mean over 50-step windows) from semantic_sweep runs' train_log.csv.

    python benchmarks/issue24_train_curves.py benchmarks/results/issue24 ema_500 sgc_500 rebal_split_500

Writes <folder>/train_curves.csv and train_curves.png. The batch PSNR is measured on the training batch
before the step's update (the held-out numbers are in results.json); it shows where the gap opens.
"""
import csv
import sys
from pathlib import Path


def windows(path: Path, width: int = 50) -> list[tuple[int, float]]:
    rows = list(csv.DictReader(path.open()))
    out = {}
    for r in rows:
        step = int(float(r["step"]))
        out.setdefault((step - 1) // width, []).append(float(r["psnr"]))
    return [((k + 1) * width, sum(v) / len(v)) for k, v in sorted(out.items())]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder, runs = Path(argv[0]), argv[1:]
    curves = {run: windows(folder / "runs" / run / "train_log.csv") for run in runs}
    lines = ["run,step_window_end,batch_psnr_mean"]
    for run, pts in curves.items():
        lines += [f"{run},{s},{p:.4f}" for s, p in pts]
    (folder / "train_curves.csv").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for run, pts in curves.items():
        ax.plot([s for s, _ in pts], [p for _, p in pts], marker="o", label=run)
    ax.set_xlabel("training step (end of a 50-step window)")
    ax.set_ylabel("training-batch PSNR (dB), window mean")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "train_curves.png", dpi=100)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
