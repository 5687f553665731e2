"""Reports (`sgcvq report`, `sgcvq compare`, the demo): a folder of PNG figures, the metric table
(metrics.json, metrics.csv) and one report.html linking them.

Per model: reconstructions beside originals, a codebook-usage histogram, a 2-D PCA of the codebook
coloured by class group, per-class usage bars. Several models (SGC beside the plain-VQ baseline)
share one table, one column each.
"""
from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window (headless machines, CI)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .metrics import group_class_of_codes  # noqa: E402

__all__ = ["write_report", "METRIC_ROWS"]

# (key, label, format) of the rows of the metric table, in order.
METRIC_ROWS = [
    ("psnr", "PSNR (dB)", "{:.2f}"),
    ("ssim", "SSIM", "{:.4f}"),
    ("active_code_fraction", "active codes (eval)", "{:.1%}"),
    ("perplexity", "perplexity", "{:.1f}"),
    ("token_purity", "token purity (label-free)", "{:.3f}"),
    ("group_miou", "group mIoU (label-free)", "{:.3f}"),
    ("temporal_stability", "temporal stability", "{:.3f}"),
    ("psnr_label_free", "PSNR label-free tokens (dB)", "{:.2f}"),
    ("train_steps", "training steps", "{:d}"),
    ("train_wall_s", "training time (s)", "{:.0f}"),
    ("skipped_files", "unreadable files skipped", "{:d}"),
]

_NOTES = {
    "token_purity": "fraction of labelled tokens whose code's majority class is the token's class",
    "group_miou": "token segmentation read off the code groups (SGC only: the baseline has no groups)",
    "temporal_stability": "consecutive video frames: fraction of token positions keeping their code, "
                          "among positions whose class is the same in both frames",
    "psnr_label_free": "reconstruction from tokens searched over all codes, without label maps",
}


def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _code_classes(result) -> tuple[torch.Tensor, str]:
    """Class per code for colouring: its group (SGC), or its majority class (baseline, no groups)."""
    K = result.codebook.shape[0]
    if result.class_offsets is not None:
        return group_class_of_codes(result.class_offsets, K), "class group"
    cls = result.confusion.argmax(1)
    cls[result.confusion.sum(1) == 0] = -1
    return cls, "majority class of its tokens (no groups)"


def _save_recon_grid(result, path: Path) -> None:
    n = result.originals.shape[0]
    fig, axes = plt.subplots(2, max(n, 1), figsize=(1.6 * max(n, 1), 3.4), squeeze=False)
    for i in range(max(n, 1)):
        for row, (imgs, title) in enumerate(((result.originals, "original"), (result.recons, "reconstruction"))):
            ax = axes[row][i]
            ax.axis("off")
            if i < n:
                ax.imshow(((imgs[i].permute(1, 2, 0).clamp(-1, 1) + 1) / 2).numpy())
            if i == 0:
                ax.set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save_usage_histogram(result, path: Path) -> None:
    counts = result.counts.float()
    cls, how = _code_classes(result)
    names = result.class_names
    colors = _colors(max(len(names), 1))
    bar_colors = [colors[c] if c >= 0 else (0.6, 0.6, 0.6, 1.0) for c in cls.tolist()]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(range(len(counts)), counts.numpy(), width=1.0, color=bar_colors)
    ax.set_xlabel(f"code index (colour: {how})")
    ax.set_ylabel("tokens (eval set)")
    active = (counts > 0).float().mean().item()
    ax.set_title(f"codebook usage: {active:.1%} of {len(counts)} codes active", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save_pca(result, path: Path) -> None:
    E = result.codebook.double()
    E = E - E.mean(0, keepdim=True)
    # The two leading right-singular vectors: an exact PCA, the codebook is small.
    _, _, V = torch.linalg.svd(E, full_matrices=False)
    xy = (E @ V[:2].T).float().numpy() if V.shape[0] >= 2 else torch.zeros(E.shape[0], 2).numpy()
    cls, how = _code_classes(result)
    names = result.class_names
    colors = _colors(max(len(names), 1))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for c in sorted(set(cls.tolist())):
        sel = (cls == c).numpy()
        label = names[c] if 0 <= c < len(names) else "unused"
        ax.scatter(xy[sel, 0], xy[sel, 1], s=10, color=colors[c] if c >= 0 else (0.6, 0.6, 0.6, 1.0), label=label)
    ax.set_title(f"codebook PCA (colour: {how})", fontsize=9)
    ax.legend(fontsize=6, markerscale=1.5, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save_per_class(result, path: Path) -> None:
    names = result.class_names
    C = len(names)
    counts = result.counts.float()
    cls, how = _code_classes(result)
    active, share = [], []
    total = max(counts.sum().item(), 1.0)
    for c in range(C):
        sel = cls == c
        active.append((counts[sel] > 0).float().mean().item() if sel.any() else 0.0)
        share.append(counts[sel].sum().item() / total)
    fig, ax = plt.subplots(figsize=(7, 3))
    x = torch.arange(C).float()
    ax.bar((x - 0.2).numpy(), active, width=0.4, label="active fraction of its codes")
    ax.bar((x + 0.2).numpy(), share, width=0.4, label="share of all tokens")
    ax.set_xticks(range(C))
    ax.set_xticklabels(names, rotation=30, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"per-class usage (codes by {how})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    try:
        return fmt.format(int(value) if "d}" in fmt else value)
    except (TypeError, ValueError):
        return str(value)


def _table_rows(columns: dict[str, dict]) -> list[tuple[str, list[str]]]:
    rows = []
    for key, label, fmt in METRIC_ROWS:
        if any(key in m for m in columns.values()):
            rows.append((label, [_fmt(m.get(key), fmt) for m in columns.values()]))
    return rows


def write_report(out_dir: str | Path, results: dict, extra: dict[str, dict] | None = None,
                 title: str = "sgcvq report", notes: list[str] | None = None) -> Path:
    """Write figures, metrics.json, metrics.csv and report.html for one or more evaluated models.

    results: {column name: EvalResult}; extra: {column name: more metrics (train_steps, ...)}.
    Returns the path of report.html.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = {}
    figures: dict[str, list[tuple[str, str]]] = {}
    for name, res in results.items():
        slug = "".join(ch if ch.isalnum() else "_" for ch in name.lower())
        files = [
            (f"recon_{slug}.png", "reconstructions (top: original, bottom: reconstruction)"),
            (f"usage_{slug}.png", "codebook usage"),
            (f"pca_{slug}.png", "codebook PCA"),
            (f"per_class_{slug}.png", "per-class usage"),
        ]
        _save_recon_grid(res, out / files[0][0])
        _save_usage_histogram(res, out / files[1][0])
        _save_pca(res, out / files[2][0])
        _save_per_class(res, out / files[3][0])
        figures[name] = files
        columns[name] = {**res.metrics, **((extra or {}).get(name, {}))}

    with open(out / "metrics.json", "w") as fh:
        json.dump(columns, fh, indent=1)
    rows = _table_rows(columns)
    with open(out / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["metric", *columns])
        writer.writerows([label, *vals] for label, vals in rows)

    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
             "td:first-child{text-align:left}img{max-width:100%}</style></head><body>",
             f"<h1>{esc(title)}</h1>"]
    for note in notes or []:
        parts.append(f"<p>{esc(note)}</p>")
    parts.append("<h2>Metrics</h2><table><tr><th>metric</th>"
                 + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>")
    for label, vals in rows:
        parts.append(f"<tr><td>{esc(label)}</td>" + "".join(f"<td>{esc(v)}</td>" for v in vals) + "</tr>")
    parts.append("</table><ul>")
    for key, text in _NOTES.items():
        label = next((lbl for k, lbl, _ in METRIC_ROWS if k == key), key)
        parts.append(f"<li><b>{esc(label)}</b>: {esc(text)}</li>")
    parts.append("</ul><p>Raw numbers: <a href='metrics.json'>metrics.json</a>, "
                 "<a href='metrics.csv'>metrics.csv</a>.</p>")
    for name, files in figures.items():
        parts.append(f"<h2>{esc(name)}</h2>")
        for fname, caption in files:
            parts.append(f"<figure><img src='{esc(fname)}' alt='{esc(caption)}'>"
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    report = out / "report.html"
    report.write_text("\n".join(parts))
    return report
