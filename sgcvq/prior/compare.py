"""The whole comparison (benchmarks/prior_compare.py runs it): for each tokenizer, a prior over its
tokens, layout-controlled samples, the context-free sampler, unconditional samples, edits,
next-frame prediction and bits per token, all scored by one judge; plus the layout-conditioned
prior on the plain-VQ tokens as the trained baseline. Writes results.json, table.md, the figures
and report.html (report.py's prior section) into one folder.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .bits import bits_per_token
from .heads import code_classes_from_offsets
from .judge import JudgeConfig, load_judge, save_judge, train_judge
from .layout import class_code_frequencies, token_layout
from .sampling import sample_context_free
from .scenes import PRIOR_CLIP_SEED, clip_tensors, held_out_seeds, scene_tensors
from .scoring import edit_scores, frechet_distance, miou, psnr, row_histogram_distance
from .tasks import class_tables, edit_grids, fit_prior, paint_box, sample_grids
from .tokens import Tokenizer, load_prior_tokenizer
from .training import PriorTrainConfig
from .video import clip_windows, predict_frames

__all__ = ["CompareSettings", "run_comparison", "merge_partials"]


@dataclass
class CompareSettings:
    """Sizes of the comparison; the defaults fit ~20 minutes of a quiet 2-core CPU for four tokenizers."""

    prior_steps: int = 600
    video_steps: int = 400
    layout_prior_steps: int = 600
    batch_size: int = 32
    video_batch_size: int = 16  # windows of three frames: 3x the tokens of an image sequence
    dim: int = 64
    layers: int = 3
    layouts: int = 128  # held-out label maps requested
    reference: int = 512  # held-out real scenes: the Fréchet distance's and histograms' reference
    seeds: tuple[int, ...] = (0, 1)  # sampling seeds (each layout sampled once per seed)
    decode_steps: int = 8
    temperature: float = 1.0
    edit_scenes: int = 64
    clips_train: int = 512
    clip_frames: int = 6  # training clips: windows of 3 consecutive frames
    eval_clips: int = 48
    horizon: int = 4
    predict_temperature: float = 0.0  # next frame: the most likely code (PSNR rewards the mode)
    bits_grids: int = 128
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    prior_seed: int = 0


def _timed(log, what: str):
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()
            return self

        def __exit__(self, *exc):
            self.s = time.perf_counter() - self.t
            log(f"  {what}: {self.s:.1f} s")
    return _T()


class _Judged:
    """The judge's reading of a set of images: labels and features."""

    def __init__(self, judge, images: torch.Tensor):
        self.labels = judge.predict(images)
        self.features = judge.embed(images)


def _realism(j: _Judged, ref: _Judged, C: int) -> dict:
    return {"frechet": frechet_distance(j.features, ref.features),
            "row_tv": row_histogram_distance(j.labels, ref.labels, C)}


def _mean_over_seeds(per_seed: list[dict]) -> dict:
    out = {k: sum(d[k] for d in per_seed) / len(per_seed) for k in per_seed[0]}
    out["per_seed"] = per_seed
    return out


class _Data:
    """Scenes and clips shared by every tokenizer: the held-out ones painted at once, the training
    scenes and clips when a tokenizer first needs them (a run that only re-renders kept results
    paints none of them)."""

    def __init__(self, tok: Tokenizer, s: CompareSettings, log):
        d = tok.cfg.data
        self._res, self._seed, self._length, self._s, self._log = tok.resolution, d.seed, d.length, s, log
        scene_seed, clip_seed = held_out_seeds(d.seed)
        with _timed(log, f"painting {s.reference} held-out scenes and {s.eval_clips} clips"):
            self.ref_images, self.ref_labels = scene_tensors(s.reference, self._res, scene_seed)
            self.eval_frames, self.eval_labels = clip_tensors(s.eval_clips, 2 + s.horizon, self._res, clip_seed)
        self.layout_images = self.ref_images[:s.layouts]
        self.layout_labels = self.ref_labels[:s.layouts]
        self.setting = (self._res, d.seed, d.length)

    @functools.cached_property
    def train_scenes(self) -> tuple[torch.Tensor, torch.Tensor]:
        with _timed(self._log, f"painting (or reading) {self._length} training scenes"):
            return scene_tensors(self._length, self._res, self._seed, cache="auto")

    @functools.cached_property
    def train_clips(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self._s
        with _timed(self._log, f"painting {s.clips_train} training clips"):
            return clip_tensors(s.clips_train, s.clip_frames, self._res, PRIOR_CLIP_SEED)


def _image_part(name: str, tok: Tokenizer, data: _Data, judge, ref: _Judged, s: CompareSettings, log) -> tuple:
    C, f, L = tok.num_classes, tok.factor, s.layouts
    train_images, train_labels = data.train_scenes
    grids = tok.encode(train_images, train_labels).flatten(1)
    tl = token_layout(train_labels, f, C).flatten(1)
    class_codes, counts = class_tables(tok, grids, tl)
    train = PriorTrainConfig(steps=s.prior_steps, batch_size=s.batch_size, seed=s.prior_seed)
    with _timed(log, f"{name}: image prior, {s.prior_steps} steps"):
        bundle = fit_prior(tok, "image", grids, class_codes, counts, train, dim=s.dim, layers=s.layers)
    r = {"kind": tok.kind, "prior_parameters": bundle.info["parameters"], "prior_head": bundle.prior.cfg.head,
         "prior_train_s": bundle.info["train_wall_s"], "prior_final_loss": bundle.info["final_loss_nats"]}
    layout = token_layout(data.layout_labels, f, C).flatten(1)
    # Ceiling: the judge on the tokenizer's own reconstructions of the requested scenes (tokens as used).
    held = tok.encode(data.layout_images, data.layout_labels)
    recon = tok.decode(held)
    r["ceiling_miou"] = miou(judge.predict(recon), data.layout_labels, C)
    freqs = class_code_frequencies(counts, class_codes)
    shown = {}
    per = {"layout": [], "context_free": [], "unconditional": []}
    with _timed(log, f"{name}: sampling ({len(s.seeds)} seeds x {L} layouts, three samplers)"):
        for seed in s.seeds:
            gen = torch.Generator().manual_seed(1000 + seed)
            runs = {"layout": sample_grids(bundle, L, layout, True, s.decode_steps, s.temperature, gen),
                    "context_free": sample_context_free(layout, freqs, gen),
                    "unconditional": sample_grids(bundle, L, None, False, s.decode_steps, s.temperature, gen)}
            for key, g in runs.items():
                imgs = tok.decode(g.view(L, *tok.grid))
                j = _Judged(judge, imgs)
                per[key].append({"miou": miou(j.labels, data.layout_labels, C), **_realism(j, ref, C)})
                shown.setdefault(key, imgs[:8].clone())
    for key, rows in per.items():
        r[key] = _mean_over_seeds(rows)
    offsets = tok.offsets
    with _timed(log, f"{name}: bits per token on {s.bits_grids} held-out grids"):
        split = offsets is not None
        code_class = code_classes_from_offsets(offsets) if split else None
        r["bits"] = bits_per_token(bundle.prior, held.flatten(1)[:s.bits_grids], code_class, C if split else None)
    with _timed(log, f"{name}: edits"):
        r["edit"], shown["edit"] = _edits(tok, bundle, data, judge, s, held)
    figs = {"recon": recon[:8].clone(), **shown}
    return r, figs, grids, tl, class_codes, counts


def _edits(tok: Tokenizer, bundle, data: _Data, judge, s: CompareSettings, held: torch.Tensor):
    E = min(s.edit_scenes, held.shape[0])
    labels = data.layout_labels[:E]
    new_labels, region_px, region_tok, found = paint_box(labels, tok.factor)
    idx = found.nonzero()[:, 0]
    if idx.numel() == 0:
        return {"scenes": 0}, None
    before = held[idx].flatten(1)
    new_layout = token_layout(new_labels[idx], tok.factor, tok.num_classes).flatten(1)
    gen = torch.Generator().manual_seed(2000)
    after = edit_grids(bundle, before, region_tok[idx].flatten(1), new_layout, s.decode_steps, s.temperature, gen)
    img_before = tok.decode(before.view(-1, *tok.grid))
    img_after = tok.decode(after.view(-1, *tok.grid))
    pred = judge.predict(img_after)
    scores = edit_scores(pred, region_px[idx], int(new_labels[idx][region_px[idx]][0]), img_after, img_before)
    scores["scenes"] = int(idx.numel())
    return scores, {"before": img_before[:6].clone(), "map": new_labels[idx][:6].clone(), "after": img_after[:6].clone()}


def _video_part(name: str, tok: Tokenizer, data: _Data, judge, s: CompareSettings, log) -> tuple[dict, dict]:
    C, n = tok.num_classes, tok.grid[0] * tok.grid[1]
    clip_frames, clip_labels = data.train_clips
    B, T = clip_frames.shape[:2]
    grids = tok.encode(clip_frames.flatten(0, 1), clip_labels.flatten(0, 1)).view(B, T, n)
    seqs = clip_windows(grids, 3)
    train = PriorTrainConfig(steps=s.video_steps, batch_size=s.video_batch_size, seed=s.prior_seed + 1)
    empty = torch.zeros(tok.num_classes, tok.num_codes, dtype=torch.bool)
    with _timed(log, f"{name}: next-frame prior, {s.video_steps} steps on {seqs.shape[0]} windows"):
        bundle = fit_prior(tok, "video", seqs, empty, torch.zeros(tok.num_codes, C, dtype=torch.long), train,
                           dim=s.dim, layers=s.layers)
    E, T2 = data.eval_frames.shape[:2]
    ev = tok.encode(data.eval_frames.flatten(0, 1), data.eval_labels.flatten(0, 1)).view(E, T2, n)
    out = {"prior_train_s": bundle.info["train_wall_s"]}
    figs = {}
    for ctx in (2, 1):
        with _timed(log, f"{name}: predicting {s.horizon} frames from {ctx} frame(s)"):
            pred = predict_frames(bundle.prior, ev[:, 2 - ctx:2], s.horizon, s.decode_steps, s.predict_temperature,
                                  torch.Generator().manual_seed(3000))
        copy_img = tok.decode(ev[:, 1].view(E, *tok.grid))
        rows = []
        for hz in range(1, s.horizon + 1):
            truth, truth_lab = data.eval_frames[:, 1 + hz], data.eval_labels[:, 1 + hz]
            img = tok.decode(pred[:, hz - 1].view(E, *tok.grid))
            rows.append({"horizon": hz,
                         "miou": miou(judge.predict(img), truth_lab, C),
                         "psnr": float(psnr(img, truth).mean()),
                         "copy_miou": miou(judge.predict(copy_img), truth_lab, C),
                         "copy_psnr": float(psnr(copy_img, truth).mean())})
            if ctx == 2:
                figs.setdefault("pred", []).append(img[:3].clone())
        out[f"context_{ctx}"] = rows
    figs["copy"] = copy_img[:3].clone()
    return out, figs


def _conditioned_part(tok: Tokenizer, data: _Data, judge, ref: _Judged, grids, tl, class_codes, counts,
                      s: CompareSettings, log) -> tuple[dict, torch.Tensor]:
    C, L = tok.num_classes, s.layouts
    train = PriorTrainConfig(steps=s.layout_prior_steps, batch_size=s.batch_size, seed=s.prior_seed + 2)
    with _timed(log, f"layout-conditioned prior on {tok.kind} tokens, {s.layout_prior_steps} steps"):
        bundle = fit_prior(tok, "layout", grids, class_codes, counts, train, layout=tl, dim=s.dim, layers=s.layers)
    layout = token_layout(data.layout_labels, tok.factor, C).flatten(1)
    per, shown = [], None
    for seed in s.seeds:
        gen = torch.Generator().manual_seed(1000 + seed)
        imgs = tok.decode(sample_grids(bundle, L, layout, False, s.decode_steps, s.temperature, gen).view(L, *tok.grid))
        j = _Judged(judge, imgs)
        per.append({"miou": miou(j.labels, data.layout_labels, C), **_realism(j, ref, C)})
        shown = imgs[:8].clone() if shown is None else shown
    return {"conditioned": _mean_over_seeds(per), "prior_parameters": bundle.info["parameters"],
            "prior_train_s": bundle.info["train_wall_s"]}, shown


def merge_partials(out: str | Path, sources: list[str | Path]) -> list[str]:
    """Combine the finished tokenizers of other comparison folders (run with the same settings and judge,
    e.g. one process per tokenizer) into <out>/partial.pt; returns the tokenizer names now there."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merged, key = {}, None
    for src in [out, *map(Path, sources)]:
        f = src / "partial.pt"
        if not f.is_file():
            if src != out:
                raise FileNotFoundError(f"merge: {str(f)!r} does not exist")
            continue
        saved = torch.load(f, weights_only=False)
        if key is not None and saved["key"] != key:
            raise ValueError(f"merge: {str(src)!r} ran with other settings or another judge than the others")
        key = saved["key"]
        merged.update(saved["models"])
    if key is not None:
        torch.save({"key": key, "models": merged}, out / "partial.pt")
    return list(merged)


def _write(out: Path, results: dict, figs: dict) -> None:
    from .outputs import write_prior_outputs

    models = results["models"].values()
    results["wall_s"] = results["setup_wall_s"] + sum(r["wall_s"] for r in models)
    results["cpu_s"] = results["setup_cpu_s"] + sum(r["cpu_s"] for r in models)
    write_prior_outputs(out, results, figs)


def _judge_for(s: CompareSettings, out: Path, judge_path, log):
    """(judge, its file): the given file, else <out>/judge.safetensors from an earlier run, else a new one."""
    path = Path(judge_path) if judge_path is not None else out / "judge.safetensors"
    if path.is_file():
        return load_judge(path), path
    if judge_path is not None:
        raise FileNotFoundError(f"judge weights {str(judge_path)!r} do not exist")
    with _timed(log, f"training the judge ({s.judge.steps} steps on {s.judge.scenes} scenes, seed {s.judge.seed})"):
        judge = train_judge(s.judge, log=log, log_every=0)
    save_judge(judge, path)
    return judge, path


def _run_key(s: CompareSettings, judge_file: Path) -> str:
    """What must match for an earlier run's per-tokenizer results to be reused: settings and judge bytes."""
    import hashlib

    digest = hashlib.sha1(judge_file.read_bytes()).hexdigest()
    return json.dumps({"settings": asdict(s), "judge": digest}, sort_keys=True, default=str)


def run_comparison(runs: list[tuple[str, str]], out: str | Path, settings: CompareSettings | None = None,
                   judge_path: str | Path | None = None, conditioned_on: str | None = "ema", resume: bool = True,
                   log=print) -> dict:
    """Run the comparison for tokenizer runs [(name, run folder)]; returns the results dict.

    judge_path: reuse a trained judge (else <out>/judge.safetensors, trained there on the first run).
    conditioned_on: the tokenizer kind the layout-conditioned baseline prior is trained on.
    resume: keep the results of tokenizers an earlier run in `out` finished with the same settings,
    judge and checkpoint (<out>/partial.pt; written after every tokenizer), and run only the others.
    """
    s = settings or CompareSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start, cpu0 = time.perf_counter(), time.process_time()
    toks = [(name, load_prior_tokenizer(path)) for name, path in runs]
    if not toks:
        raise ValueError("run_comparison: no tokenizer runs given")
    data = _Data(toks[0][1], s, log)
    for name, tok in toks[1:]:
        if (tok.resolution, tok.cfg.data.seed, tok.cfg.data.length) != data.setting:
            raise ValueError(f"run_comparison: {name} was trained on other data ({tok.resolution} px, seed "
                             f"{tok.cfg.data.seed}) than {toks[0][0]}; compare tokenizers of one data setting")
    judge, judge_file = _judge_for(s, out, judge_path, log)
    key = _run_key(s, judge_file)
    partial_file = out / "partial.pt"
    done = {}
    if resume and partial_file.is_file():
        saved = torch.load(partial_file, weights_only=False)
        if saved.get("key") == key:
            done = saved["models"]
    C = toks[0][1].num_classes
    ref = _Judged(judge, data.ref_images)
    results = {"settings": asdict(s), "judge": str(judge_file), "tokenizers": {name: tok.path for name, tok in toks},
               "judge_miou_real": miou(ref.labels, data.ref_labels, C), "models": {},
               "setup_wall_s": time.perf_counter() - start, "setup_cpu_s": time.process_time() - cpu0}
    figs = {"maps": data.layout_labels[:8], "real": data.layout_images[:8], "models": {},
            "truth": [data.eval_frames[:3, 1 + h] for h in range(1, s.horizon + 1)],
            "context": data.eval_frames[:3, 1]}
    for name, tok in toks:
        checkpoint = str(tok.model_checkpoint)
        if name in done and done[name][0].get("checkpoint") == checkpoint:
            log(f"{name}: kept from the earlier run in {out}")
            results["models"][name], figs["models"][name] = done[name]
            continue
        log(f"{name} ({tok.kind}, K = {tok.num_codes}, grid {tok.grid[0]}x{tok.grid[1]})")
        t0, c0 = time.perf_counter(), time.process_time()
        r, f_img, grids, tl, class_codes, counts = _image_part(name, tok, data, judge, ref, s, log)
        r["next_frame"], f_vid = _video_part(name, tok, data, judge, s, log)
        if conditioned_on is not None and tok.kind == conditioned_on:
            cond, shown = _conditioned_part(tok, data, judge, ref, grids, tl, class_codes, counts, s, log)
            r["layout_conditioned_prior"] = cond
            f_img["conditioned"] = shown
        r.update(checkpoint=checkpoint, wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
        results["models"][name] = r
        figs["models"][name] = {**f_img, **f_vid}
        done[name] = (r, figs["models"][name])
        torch.save({"key": key, "models": done}, partial_file)
        _write(out, results, figs)  # the table so far: a run cut short still leaves its finished columns
    _write(out, results, figs)
    log(f"comparison done: {results['wall_s']:.0f} s wall, {results['cpu_s']:.0f} s CPU: {out / 'table.md'}")
    return results
