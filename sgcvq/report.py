"""Reports (`sgcvq report`, `sgcvq compare`, the demo): a folder of PNG figures, the metric table
(metrics.json, metrics.csv) and one report.html linking them.

Per model: reconstructions beside originals, codebook-usage histograms, a PCA and a t-SNE of the
codebook coloured by class group (t-SNE needs scikit-learn: `pip install scikit-learn`; without it
the section says so), per-class active codes and token counts. Several models (SGC beside its
baselines) share one table, one column each, and each figure is one section of the report with
the models side by side and a one-line caption.
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

__all__ = ["write_report", "METRIC_ROWS", "FIGURES", "codebook_pca", "codebook_tsne", "per_class_counts"]

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
    ("active_code_fraction_label_free", "active codes (eval, label-free)", "{:.1%}"),
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
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3), gridspec_kw={"width_ratios": [2, 1]})
    ax.bar(range(len(counts)), counts.numpy(), width=1.0, color=bar_colors)
    ax.set_xlabel(f"code index (colour: {how})", fontsize=8)
    ax.set_ylabel("tokens (eval set)")
    active = (counts > 0).float().mean().item()
    ax.set_title(f"codebook usage: {active:.1%} of {len(counts)} codes active", fontsize=10)
    # Sorted counts on log axes: collapse shows as a short head and a long tail of unused codes.
    ranked = counts.sort(descending=True).values
    ax2.plot(range(1, len(ranked) + 1), (ranked + 1).numpy(), color="k", lw=1)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("code rank", fontsize=8)
    ax2.set_ylabel("tokens + 1", fontsize=8)
    ax2.set_title("sorted usage", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _scatter_codes(xy, result, path: Path, title: str) -> None:
    cls, how = _code_classes(result)
    names = result.class_names
    colors = _colors(max(len(names), 1))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for c in sorted(set(cls.tolist())):
        sel = (cls == c).numpy()
        label = names[c] if 0 <= c < len(names) else "unused"
        ax.scatter(xy[sel, 0], xy[sel, 1], s=10, color=colors[c] if c >= 0 else (0.6, 0.6, 0.6, 1.0), label=label)
    ax.set_title(f"{title} (colour: {how})", fontsize=9)
    ax.legend(fontsize=6, markerscale=1.5, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def codebook_pca(codebook: torch.Tensor) -> torch.Tensor:
    """[K, 2] float32: the codes projected on their two leading principal axes (exact, via SVD)."""
    E = codebook.double()
    E = E - E.mean(0, keepdim=True)
    _, _, V = torch.linalg.svd(E, full_matrices=False)
    if V.shape[0] < 2:
        return torch.zeros(E.shape[0], 2)
    return (E @ V[:2].T).float()


def codebook_tsne(codebook: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """[K, 2] float32 t-SNE of the codes (scikit-learn; an ImportError naming the pip command without it)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError as err:
        raise ImportError("the t-SNE figure needs scikit-learn: pip install scikit-learn") from err
    E = codebook.double().numpy()
    K = E.shape[0]
    if K < 4:
        return torch.zeros(K, 2)
    perplexity = float(min(30.0, (K - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(E)
    return torch.from_numpy(xy).float()


def _save_pca(result, path: Path) -> None:
    _scatter_codes(codebook_pca(result.codebook).numpy(), result, path, "codebook PCA")


def _save_tsne(result, path: Path) -> None:
    _scatter_codes(codebook_tsne(result.codebook).numpy(), result, path, "codebook t-SNE")


def per_class_counts(result) -> tuple[list[int], list[int], list[int]]:
    """(codes, active codes, tokens) per class: the class's codes (its group, or without groups the
    codes whose tokens are mostly of that class), those that took a token, and the tokens they took
    (eval set, as trained)."""
    counts = result.counts
    cls, _ = _code_classes(result)
    sizes, active, tokens = [], [], []
    for c in range(len(result.class_names)):
        sel = cls == c
        sizes.append(int(sel.sum()))
        active.append(int((counts[sel] > 0).sum()))
        tokens.append(int(counts[sel].sum()))
    return sizes, active, tokens


def _save_per_class(result, path: Path) -> None:
    names = result.class_names
    C = len(names)
    _, how = _code_classes(result)
    sizes, active, tokens = per_class_counts(result)
    colors = _colors(max(C, 1))[:C]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
    x = list(range(C))
    ax.bar(x, sizes, color=(0.85, 0.85, 0.85, 1.0), label="codes of the class")
    ax.bar(x, active, color=colors, label="active codes")
    ax.set_title(f"active codes per class (codes by {how})", fontsize=9)
    ax2.bar(x, tokens, color=colors)
    ax2.set_yscale("symlog")
    ax2.set_title("tokens per class (eval set)", fontsize=9)
    for a in (ax, ax2):
        a.set_xticks(x)
        a.set_xticklabels(names, rotation=30, fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# (key, section title, one-line caption, writer): one report section per figure, one PNG per model.
FIGURES = [
    ("recon", "Reconstructions", "Held-out scenes: originals on top, reconstructions below.", _save_recon_grid),
    ("usage", "Codebook usage", "Tokens per code on the eval set (coloured by class) and the sorted counts: "
                                "a collapsed codebook shows a long tail of unused codes.", _save_usage_histogram),
    ("pca", "Codebook PCA", "The codes' two leading principal components, coloured by class group (baselines: "
                            "by the majority class of each code's tokens); semantic codes form one cluster per "
                            "class.", _save_pca),
    ("tsne", "Codebook t-SNE", "t-SNE of the codes, coloured as the PCA: class clusters in the codes' "
                               "neighbourhoods.", _save_tsne),
    ("per_class", "Per-class codes and tokens", "Per class: active codes among its codes, and its token count; "
                                                "rare classes (persons, poles) need codes in use too.",
     _save_per_class),
]


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
    # figures[key] = [(model name, file name or None, why it is missing)]
    figures: dict[str, list[tuple[str, str | None, str]]] = {key: [] for key, *_ in FIGURES}
    for name, res in results.items():
        slug = "".join(ch if ch.isalnum() else "_" for ch in name.lower())
        for key, _, _, draw in FIGURES:
            fname = f"{key}_{slug}.png"
            try:
                draw(res, out / fname)
                figures[key].append((name, fname, ""))
            except ImportError as err:  # optional dependency (scikit-learn for t-SNE)
                figures[key].append((name, None, str(err)))
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
             "td:first-child{text-align:left}img{max-width:100%}.row{display:flex;flex-wrap:wrap;gap:8px}"
             ".row figure{flex:1 1 300px;margin:0}.caption{color:#444}.missing{color:#a00}</style></head><body>",
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
    for key, heading, caption, _ in FIGURES:
        parts.append(f"<section id='{key}'><h2>{esc(heading)}</h2><p class='caption'>{esc(caption)}</p>"
                     "<div class='row'>")
        for name, fname, why in figures[key]:
            body = (f"<img src='{esc(fname)}' alt='{esc(heading)}: {esc(name)}'>" if fname
                    else f"<p class='missing'>not drawn: {esc(why)}</p>")
            parts.append(f"<figure>{body}<figcaption>{esc(name)}</figcaption></figure>")
        parts.append("</div></section>")
    parts.append("</body></html>")
    report = out / "report.html"
    report.write_text("\n".join(parts))
    return report


# --------------------------------------------------------------------------------------------
# The prior's section (sgcvq.prior: layout-controlled samples, edits, next-frame prediction)
# --------------------------------------------------------------------------------------------
def prior_section_html(header: list[str], rows: list[tuple[str, list[str]]],
                       figures: list[tuple[str, str, str]], notes: list[str] | None = None) -> str:
    """The HTML of the prior section: the table (one column per tokenizer) and figures
    [(heading, caption, file name)]."""
    esc = html.escape
    parts = ["<section id='prior'><h2>Masked-token prior: layout control, edits, next frame</h2>"]
    parts += [f"<p>{esc(n)}</p>" for n in notes or []]
    parts.append("<table><tr><th>metric</th>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for label, vals in rows:
        parts.append(f"<tr><td>{esc(label)}</td>" + "".join(f"<td>{esc(v)}</td>" for v in vals) + "</tr>")
    parts.append("</table>")
    for heading, caption, fname in figures:
        parts.append(f"<h3>{esc(heading)}</h3><p class='caption'>{esc(caption)}</p>"
                     f"<img src='{esc(fname)}' alt='{esc(heading)}'>")
    parts.append("</section>")
    return "\n".join(parts)


def write_prior_report(out_dir: str | Path, header: list[str], rows: list[tuple[str, list[str]]],
                       figures: list[tuple[str, str, str]], notes: list[str] | None = None,
                       title: str = "sgcvq: a masked-token prior on each tokenizer") -> Path:
    """report.html holding the prior section alone (figures already written into out_dir)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = ["<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
            "td:first-child{text-align:left}img{max-width:100%}.caption{color:#444}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>", prior_section_html(header, rows, figures, notes), "</body></html>"]
    report = out / "report.html"
    report.write_text("\n".join(page))
    return report
