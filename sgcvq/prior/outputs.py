"""What the comparison writes: results.json, table.md (the table and the floor checks), the figure
grids and report.html (sgcvq.report's prior section)."""
from __future__ import annotations

import json
from pathlib import Path

from .figures import save_grid

__all__ = ["table_rows", "floor_checks", "write_prior_outputs"]

COND = "plain VQ + layout-conditioned prior"


def _f(v, fmt="{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _cols(results: dict) -> list[tuple[str, dict, dict | None]]:
    """(column name, model results, conditioned results or None), the conditioned baseline last."""
    cols = [(name, r, None) for name, r in results["models"].items()]
    for name, r in results["models"].items():
        if "layout_conditioned_prior" in r:
            cols.append((COND, r, r["layout_conditioned_prior"]["conditioned"]))
    return cols


def table_rows(results: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(header, rows) of the table: one column per tokenizer, the conditioned baseline last."""
    cols = _cols(results)
    header = [c[0] for c in cols]

    def row(label, get, fmt="{:.3f}"):
        vals = []
        for _, r, cond in cols:
            try:
                vals.append(_f(get(r, cond), fmt))
            except (KeyError, TypeError, IndexError):
                vals.append("")
        return label, vals

    lay = lambda r, c: c if c is not None else r["layout"]  # noqa: E731
    only = lambda f: (lambda r, c: None if c is not None else f(r))  # noqa: E731
    rows = [
        row("judge mIoU, layout-controlled samples", lambda r, c: lay(r, c)["miou"]),
        row("  ceiling: judge mIoU on reconstructions", lambda r, c: r["ceiling_miou"]),
        row("  samples / ceiling", lambda r, c: lay(r, c)["miou"] / r["ceiling_miou"], "{:.2f}"),
        row("judge mIoU, context-free sampler (same codes)", only(lambda r: r["context_free"]["miou"])),
        row("Fréchet (judge features), layout-controlled", lambda r, c: lay(r, c)["frechet"], "{:.2f}"),
        row("Fréchet, context-free sampler", only(lambda r: r["context_free"]["frechet"]), "{:.2f}"),
        row("Fréchet, unconditional samples", only(lambda r: r["unconditional"]["frechet"]), "{:.2f}"),
        row("row-histogram TV, layout-controlled", lambda r, c: lay(r, c)["row_tv"]),
        row("row-histogram TV, context-free", only(lambda r: r["context_free"]["row_tv"])),
        row("row-histogram TV, unconditional", only(lambda r: r["unconditional"]["row_tv"])),
        row("edit: IoU of the painted class inside the region", only(lambda r: r["edit"]["iou_inside"])),
        row("edit: PSNR outside the region (dB)", only(lambda r: r["edit"]["psnr_outside"]), "{:.2f}"),
    ]
    horizons = len(next(iter(results["models"].values()))["next_frame"]["context_2"])
    for h in range(horizons):
        rows.append(row(f"next frame h={h + 1}: judge mIoU, prior",
                        only(lambda r, h=h: r["next_frame"]["context_2"][h]["miou"])))
        rows.append(row(f"  copy-last frame, h={h + 1}", only(lambda r, h=h: r["next_frame"]["context_2"][h]["copy_miou"])))
        rows.append(row(f"next frame h={h + 1}: PSNR (dB), prior", only(lambda r, h=h: r["next_frame"]["context_2"][h]["psnr"]),
                        "{:.2f}"))
        rows.append(row(f"  copy-last frame, h={h + 1}", only(lambda r, h=h: r["next_frame"]["context_2"][h]["copy_psnr"]),
                        "{:.2f}"))
    rows += [
        row("next frame h=1 from one frame: judge mIoU", only(lambda r: r["next_frame"]["context_1"][0]["miou"])),
        row("bits per token (held-out, any-order)", only(lambda r: r["bits"]["bits"]), "{:.2f}"),
        row("  semantic bits (class)", only(lambda r: r["bits"].get("semantic_bits")), "{:.2f}"),
        row("  texture bits (code in class)", only(lambda r: r["bits"].get("texture_bits")), "{:.2f}"),
        row("prior parameters", lambda r, c: r["layout_conditioned_prior"]["prior_parameters"] if c is not None
            else r["prior_parameters"], "{:,d}"),
        row("this column's comparison: CPU s", only(lambda r: r.get("cpu_s")), "{:.0f}"),
        row("prior training (s)", lambda r, c: r["layout_conditioned_prior"]["prior_train_s"] if c is not None
            else r["prior_train_s"], "{:.0f}"),
    ]
    return header, rows


def floor_checks(results: dict) -> list[str]:
    """The issue's floors, each as a line 'met' / 'NOT met' with its numbers."""
    models = results["models"]
    sgc = next((n for n, r in models.items() if r["kind"] == "sgc"), None)
    if sgc is None:
        return ["no SGC tokenizer in the comparison: floors not checked"]
    S = models[sgc]
    base = {n: r for n, r in models.items() if n != sgc}
    lines = []

    def check(ok: bool, text: str):
        lines.append(f"{'met' if ok else 'NOT met'}: {text}")

    m, ceil = S["layout"]["miou"], S["ceiling_miou"]
    check(m >= 0.9 * ceil, f"SGC layout mIoU {m:.3f} >= 0.9 x its ceiling {ceil:.3f} = {0.9 * ceil:.3f}")
    if base:
        best_name, best = max(((n, r["layout"]["miou"]) for n, r in base.items()), key=lambda t: t[1])
        check(m >= best + 0.15, f"SGC layout mIoU {m:.3f} >= best baseline ({best_name}, {best:.3f}) + 0.15")
        if m - best < 0.05:
            lines.append(f"note: the best baseline ({best_name}) comes within 0.05 mIoU of SGC ({m - best:+.3f})")
    ema = next((r for r in base.values() if r["kind"] == "ema"), None)
    if ema is not None:
        ref = ema["unconditional"]["frechet"]
        check(S["layout"]["frechet"] <= 1.1 * ref, f"SGC layout-controlled Fréchet {S['layout']['frechet']:.2f} within "
              f"10% of plain VQ's unconditional samples ({ref:.2f})")
        if "layout_conditioned_prior" in ema:
            cm = ema["layout_conditioned_prior"]["conditioned"]["miou"]
            check(m >= cm - 0.03, f"SGC zero-shot layout mIoU {m:.3f} within 0.03 of the layout-conditioned prior "
                  f"on plain-VQ tokens ({cm:.3f})")
    cf = S["context_free"]
    check(m > cf["miou"] and S["layout"]["frechet"] < cf["frechet"],
          f"SGC's prior beats the context-free sampler: mIoU {m:.3f} vs {cf['miou']:.3f}, Fréchet "
          f"{S['layout']['frechet']:.2f} vs {cf['frechet']:.2f}")
    for h in S["next_frame"]["context_2"]:
        check(h["miou"] > h["copy_miou"] and h["psnr"] > h["copy_psnr"],
              f"SGC next frame h={h['horizon']}: mIoU {h['miou']:.3f} vs copy-last {h['copy_miou']:.3f}, PSNR "
              f"{h['psnr']:.2f} vs {h['copy_psnr']:.2f} dB")
    return lines


def _figures(out: Path, figs: dict) -> list[tuple[str, str, str]]:
    names = list(figs["models"])
    rows = [("requested map", list(figs["maps"])), ("real scene", list(figs["real"]))]
    for n in names:
        rows.append((f"{n}", list(figs["models"][n]["layout"])))
        if "conditioned" in figs["models"][n]:
            rows.append((f"{n}, conditioned prior", list(figs["models"][n]["conditioned"])))
    for n in names:
        rows.append((f"{n}, context-free", list(figs["models"][n]["context_free"])))
    save_grid(rows, out / "layout_samples.png", "layout-controlled samples beside the requested maps")
    edit_rows = []
    for n in names:
        e = figs["models"][n].get("edit")
        if e is not None:
            k = min(4, len(e["before"]))
            edit_rows.append((n, [t for i in range(k) for t in (e["before"][i], e["map"][i], e["after"][i])]))
    if edit_rows:
        save_grid(edit_rows, out / "edits.png", "edits: before | painted map | after (a vehicle painted on the road)")
    vid_rows = []
    clip = 0
    vid_rows.append(("truth", [figs["context"][clip]] + [t[clip] for t in figs["truth"]]))
    for n in names:
        p = figs["models"][n]["pred"]
        vid_rows.append((n, [figs["models"][n]["copy"][clip]] + [p[h][clip] for h in range(len(p))]))
    save_grid(vid_rows, out / "next_frames.png", "last context frame, then horizons 1-4 (rows: truth, predictions)")
    figures = [("Layout-controlled samples", "Held-out label maps (top), their real scenes, each tokenizer's sample "
                "with every token restricted to its class's codes, and the context-free sampler.", "layout_samples.png"),
               ("Next-frame prediction", "From two context frames; first column the last context frame (its "
                "reconstruction for the models), then horizons 1-4.", "next_frames.png")]
    if edit_rows:
        figures.insert(1, ("Edits", "A vehicle painted onto the road: decoded tokens before, the painted map, after "
                           "re-masking and resampling only the painted tokens.", "edits.png"))
    return figures


def write_prior_outputs(out: str | Path, results: dict, figs: dict) -> Path:
    from ..report import write_prior_report

    out = Path(out)
    header, rows = table_rows(results)
    floors = floor_checks(results)
    results["floors"] = floors
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    md = ["| metric | " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(header)]
    md += [f"| {label} | " + " | ".join(vals) + " |" for label, vals in rows]
    md += ["", f"Judge mIoU on real held-out scenes: {results['judge_miou_real']:.3f}. "
               f"Whole comparison: {results['wall_s']:.0f} s wall, {results['cpu_s']:.0f} s CPU "
               "(tokenizers kept from an earlier run count with their own times).", ""] + [f"- {line}" for line in floors]
    (out / "table.md").write_text("\n".join(md) + "\n")
    figures = _figures(out, figs)
    notes = [f"Judge mIoU on real held-out scenes: {results['judge_miou_real']:.3f}.", *floors]
    return write_prior_report(out, header, rows, figures, notes)
