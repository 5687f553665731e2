"""The `sgcvq` command line: train, eval, report, compare, study, encode, decode, prior.

A thin layer: each subcommand builds a Config (defaults < --config YAML < --set overrides <
explicit flags) or loads a checkpoint, then calls one library function.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="config file (missing keys keep their defaults)")
    p.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", nargs="+", default=[],
                   action="extend", help="override config values, e.g. --set optim.lr=1e-4 train.amp=bf16")


def _add_eval_data(p: argparse.ArgumentParser) -> None:
    """The evaluation-data options shared by eval, report and compare."""
    p.add_argument("--max-images", type=int, default=None, help="evaluate on at most N images")
    p.add_argument("--data-root", default=None, help="evaluate on images in this folder instead")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sgcvq",
        description="Semantic-guided clustering VQ (SGC-VQGAN) tokenizer: train, evaluate, report, tokenize.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a tokenizer (or --demo: SGC vs plain VQ in ~5 min on a CPU)",
                       description="Train SGC-VQGAN. Launch with torchrun for several processes (DDP).")
    _add_config_args(p)
    p.add_argument("--out", default=None, help="run folder (default runs/train, or runs/demo with --demo)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (train.max_steps)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue from CKPT, or without a value from the latest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="start again in an --out that holds checkpoints")
    p.add_argument("--demo", action="store_true",
                   help="train SGC-VQGAN and the plain-VQ baseline on synthetic scenes, then write a report")
    p.add_argument("--data-root", default=None, help="train on images in this folder (data.dataset=folder)")
    p.add_argument("--segmenter", default=None, metavar="MODULE:FUNCTION",
                   help="labels from this segmentation model (images [B,3,H,W] in [-1,1] -> labels [B,H,W]) "
                        "instead of label files (data.segmenter)")
    p.add_argument("--batch-size", type=int, default=None, help="per-process batch size (data.batch_size)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (optim.lr)")
    p.add_argument("--amp", choices=["auto", "fp32", "bf16", "fp16"], default=None, help="precision (train.amp)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_device(p)

    p = sub.add_parser("eval", help="evaluate a checkpoint; prints and writes metrics.json")
    p.add_argument("--ckpt", required=True, help="checkpoint folder, or a run folder (its latest checkpoint)")
    p.add_argument("--out", default=None, help="folder for metrics.json (default: print only)")
    _add_eval_data(p)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even if an EMA was kept")
    _add_device(p)

    p = sub.add_parser("report", help="evaluate a checkpoint and write an HTML report with figures")
    p.add_argument("--ckpt", required=True, help="checkpoint folder, or a run folder")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--name", default=None, help="column name in the table (default: SGC-VQGAN or plain VQ)")
    _add_eval_data(p)
    _add_device(p)

    p = sub.add_parser("compare", help="SGC vs its baselines (plain VQ, VQGAN, CVQ): one report, one column each")
    p.add_argument("--sgc", default=None, help="checkpoint of the SGC model")
    p.add_argument("--baseline", default=None, help="checkpoint of the plain-VQ baseline")
    p.add_argument("--model", dest="models", metavar="NAME=CKPT", nargs="+", default=[], action="extend",
                   help="more models, e.g. --model VQGAN=runs/vqgan CVQ=runs/cvq (trained with model.quantizer=...)")
    p.add_argument("--out", required=True, help="report folder")
    _add_eval_data(p)
    _add_device(p)

    p = sub.add_parser("study", help="codebook studies; usage-vs-k: active codes, perplexity and label-free "
                                     "purity of each quantizer at several K")
    p.add_argument("name", choices=["usage-vs-k"], help="the study to run")
    p.add_argument("--out", default="runs/study_usage_vs_k", help="folder for results.json, table.md, the plot")
    p.add_argument("--ks", default="128,1024,8192", help="codebook sizes, comma-separated")
    p.add_argument("--quantizers", default="vqgan,cvq,ema,sgc", help="model.quantizer kinds, comma-separated")
    p.add_argument("--steps", type=int, default=300, help="training steps per run")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--eval-images", type=int, default=2048,
                   help="held-out scenes per evaluation, 64 tokens each (2048: 16 tokens per code at K = 8192)")
    p.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", nargs="+", default=[], action="extend",
                   help="config overrides for every run")

    p = sub.add_parser("encode", help="images (and optional label maps) -> token grids")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--images", required=True, help="an image file or a folder (searched recursively)")
    p.add_argument("--labels", default=None,
                   help="folder of label maps mirroring --images (.png class ids, 255 ignore); SGC models")
    p.add_argument("--out", required=True, help="folder for the token files")
    p.add_argument("--format", choices=["npy", "safetensors"], default="npy")
    p.add_argument("--size", type=int, default=None, help="resize images to SIZE x SIZE (default: training size)")
    p.add_argument("--batch-size", type=int, default=16)
    _add_device(p)

    p = sub.add_parser("decode", help="token grids (.npy / .safetensors) -> PNG images")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--tokens", required=True, help="a .npy or .safetensors file, or a folder of them")
    p.add_argument("--out", required=True, help="folder for the PNG images")
    p.add_argument("--batch-size", type=int, default=16)
    _add_device(p)
    _add_prior_parser(sub)
    return parser


def _add_prior_parser(sub) -> None:
    """`sgcvq prior train | sample | edit | predict` (sgcvq/prior/commands.py)."""
    p = sub.add_parser("prior", help="a masked-token prior over a tokenizer's tokens: layout-controlled samples, "
                                     "edits, next-frame prediction")
    psub = p.add_subparsers(dest="prior_command", metavar="ACTION", required=True)
    q = psub.add_parser("train", help="train a prior on the tokens of a tokenizer run")
    q.add_argument("--tokenizer", required=True, help="tokenizer run folder or checkpoint")
    q.add_argument("--out", required=True, help="folder for prior.safetensors and prior.json")
    q.add_argument("--task", choices=["image", "video", "layout"], default="image",
                   help="image: one grid (layout control by restriction); video: next frame from two; "
                        "layout: conditioned on the label map's tokens (the trained baseline)")
    q.add_argument("--head", choices=["auto", "flat", "factorised"], default="auto",
                   help="factorised (class, then code in its group) needs a grouped (SGC) tokenizer; auto picks it there")
    q.add_argument("--steps", type=int, default=1200)
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--dim", type=int, default=64)
    q.add_argument("--layers", type=int, default=3)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--max-images", type=int, default=None, help="encode at most N training images")
    q.add_argument("--clips", type=int, default=512, help="training clips for --task video")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prior", required=True, help="a prior folder (sgcvq prior train --out)")
    common.add_argument("--tokenizer", default=None, help="tokenizer run (default: the one the prior was trained on)")
    common.add_argument("--out", required=True, help="folder for the PNG images")
    common.add_argument("--steps", type=int, default=8, help="decoding steps")
    common.add_argument("--seed", type=int, default=0)
    q = psub.add_parser("sample", parents=[common], help="samples, each token restricted to its class's codes")
    q.add_argument("--labels", default=None, help="a label-map PNG (class ids at the tokenizer's size) or a folder")
    q.add_argument("--num", type=int, default=8, help="unconditional samples when no --labels")
    q.add_argument("--temperature", type=float, default=1.0)
    q.add_argument("--no-restrict", action="store_true", help="ignore the layout (sample unconditionally)")
    q = psub.add_parser("edit", parents=[common], help="paint a box with a class and resample only its tokens")
    q.add_argument("--image", required=True)
    q.add_argument("--labels", default=None, help="the image's label map (an SGC tokenizer encodes with it)")
    q.add_argument("--box", required=True, metavar="Y0,X0,Y1,X1", help="pixel box, end exclusive")
    q.add_argument("--paint", required=True, metavar="CLASS", help="class name (e.g. vehicle) or id")
    q.add_argument("--temperature", type=float, default=1.0)
    q = psub.add_parser("predict", parents=[common], help="predict the next frames of a clip")
    q.add_argument("--frames", required=True, nargs="+", help="1 or 2 context frames, oldest first")
    q.add_argument("--labels", nargs="+", default=None, help="their label maps (an SGC tokenizer encodes with them)")
    q.add_argument("--horizon", type=int, default=4)
    q.add_argument("--temperature", type=float, default=0.0, help="0: the most likely code at each position")


def _device(name: str | None):
    from .training.process_group import resolve_device

    return resolve_device(name or "auto")


def _train_config(args):
    from .config import Config, apply_overrides, load_config

    cfg = load_config(args.config) if args.config else Config()
    cfg = apply_overrides(cfg, args.overrides)
    if args.max_steps is not None:
        cfg.train.max_steps = args.max_steps
    if args.data_root is not None:
        cfg.data.dataset, cfg.data.root = "folder", args.data_root
    if args.segmenter is not None:
        cfg.data.segmenter = args.segmenter
    if args.batch_size is not None:
        cfg.data.batch_size = args.batch_size
    if args.lr is not None:
        cfg.optim.lr = args.lr
    if args.amp is not None:
        cfg.train.amp = args.amp
    if args.device is not None:
        cfg.train.device = args.device
    if args.no_progress:
        cfg.log.progress = False
    return cfg


def _keep_saved_run_length(cfg, args) -> None:
    """On --resume the checkpoint's config is used; keep its max_steps unless --max-steps is given."""
    from .checkpoint import latest_checkpoint, load_checkpoint

    path = args.resume
    if path == "auto":
        path = latest_checkpoint(Path(args.out or "runs/train") / "checkpoints")
        if path is None:
            return  # nothing to resume: a fresh run with the given config
    saved = load_checkpoint(path, with_optim=False)["state"]["config"]
    if args.max_steps is None and not any(o.startswith("train.max_steps=") for o in args.overrides):
        cfg.train.max_steps = saved["train"]["max_steps"]
    taken = ("train.max_steps=", "train.time_limit_s=", "train.device=", "train.compile=", "train.channels_last=",
             "data.num_workers=", "data.pin_memory=", "data.prefetch_factor=", "data.cache=", "log.")
    ignored = [o for o in args.overrides if not o.startswith(taken)]
    if ignored or args.config:
        print("sgcvq train: note: --resume continues with the checkpoint's config; only train.max_steps, "
              "train.time_limit_s, train.device, train.compile, train.channels_last, data.num_workers, "
              "data.pin_memory, data.prefetch_factor, data.cache and log.* are taken from the command line "
              f"(ignored: {ignored or args.config})", file=sys.stderr)


def _metrics_table(csv_path) -> str:
    """The report's metric table (metrics.csv) as aligned text, one column per model."""
    import csv

    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for r, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if r == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cmd_train(args) -> int:
    if args.demo:
        from .training import run_demo

        if args.config or args.resume or args.data_root:
            raise ValueError("--demo takes no --config, --resume or --data-root (it uses --out, --max-steps, --set)")
        overrides = list(args.overrides)
        if args.device:
            overrides.append(f"train.device={args.device}")
        report = run_demo(args.out or "runs/demo", args.max_steps, overrides, progress=not args.no_progress)
        print(_metrics_table(report.parent / "metrics.csv"))
        print(f"report: {report}")
        return 0
    from .training import train

    cfg = _train_config(args)
    if args.resume is not None:
        _keep_saved_run_length(cfg, args)
    result = train(cfg, args.out or "runs/train", resume=args.resume, overwrite=args.overwrite)
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    return 0


def _evaluate(ckpt: str, args, use_ema: bool = True):
    from .tokenizer_io import load_tokenizer
    from .training import evaluate

    device = _device(args.device)
    model, cfg, state = load_tokenizer(ckpt, device, use_ema=use_ema)
    result = evaluate(model, cfg, device, max_images=args.max_images, root=args.data_root)
    extra = {"train_steps": state["step"], "skipped_files": state.get("skipped_files", 0)}
    return result, cfg, extra


def _default_name(cfg) -> str:
    from .model.quantizers import resolve_quantizer_kind

    kind = resolve_quantizer_kind(cfg.model.quantizer, cfg.model.num_classes)
    return {"sgc": "SGC-VQGAN", "ema": "plain VQ (baseline)", "vqgan": "VQGAN", "cvq": "CVQ-VAE"}[kind]


def _cmd_eval(args) -> int:
    result, cfg, extra = _evaluate(args.ckpt, args, use_ema=not args.no_ema)
    metrics = {**result.metrics, **extra}
    text = json.dumps(metrics, indent=1)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(text)
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    result, cfg, extra = _evaluate(args.ckpt, args)
    name = args.name or _default_name(cfg)
    report = write_report(args.out, {name: result}, {name: extra}, title=f"sgcvq report: {args.ckpt}")
    print(f"report: {report}")
    return 0


def _cmd_compare(args) -> int:
    from .report import write_report

    named = []
    if args.sgc:
        named.append(("SGC-VQGAN", args.sgc))
    if args.baseline:
        named.append(("plain VQ (baseline)", args.baseline))
    for item in args.models:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--model {item!r} must look like NAME=CKPT")
        named.append((name, path))
    if len(named) < 2:
        raise ValueError("compare needs at least two models (--sgc, --baseline, --model NAME=CKPT)")
    results, extra, settings = {}, {}, set()
    for name, path in named:
        results[name], cfg, extra[name] = _evaluate(path, args)
        settings.add((cfg.data.resolution, cfg.data.dataset))
    if len(settings) > 1:
        print("sgcvq compare: warning: the checkpoints were trained on different data settings", file=sys.stderr)
    report = write_report(args.out, results, extra, title="sgcvq: " + " vs ".join(results),
                          notes=[f"{name}: {path}" for name, path in named])
    print(f"report: {report}")
    return 0


def _cmd_study(args) -> int:
    from .study import run_usage_vs_k

    ks = [int(k) for k in args.ks.split(",") if k]
    kinds = [k for k in args.quantizers.split(",") if k]
    run_usage_vs_k(args.out, ks, kinds, steps=args.steps, jobs=args.jobs, eval_images=args.eval_images,
                   overrides=args.overrides)
    print(f"study: {Path(args.out) / 'table.md'}, {Path(args.out) / 'usage_vs_k.png'}")
    return 0


def _cmd_encode(args) -> int:
    from .tokenizer_io import encode_files, load_tokenizer

    model, cfg, _ = load_tokenizer(args.ckpt, _device(args.device))
    files = encode_files(model, cfg, args.images, args.out, labels=args.labels, fmt=args.format,
                         batch_size=args.batch_size, size=args.size)
    print(f"wrote {len(files)} token file(s) to {args.out}")
    return 0


def _cmd_decode(args) -> int:
    from .tokenizer_io import decode_files, load_tokenizer

    model, cfg, _ = load_tokenizer(args.ckpt, _device(args.device))
    files = decode_files(model, cfg, args.tokens, args.out, batch_size=args.batch_size)
    print(f"wrote {len(files)} image(s) to {args.out}")
    return 0


def _cmd_prior(args) -> int:
    from .prior import commands as pc

    a = args
    if a.prior_command == "train":
        path = pc.cmd_train(a.tokenizer, a.out, a.task, a.head, a.steps, a.batch_size, a.dim, a.layers, a.seed,
                            a.max_images, a.clips, log=lambda m: print(m, file=sys.stderr))
        print(f"prior: {path}")
        return 0
    if a.prior_command == "sample":
        files = pc.cmd_sample(a.prior, a.out, a.labels, a.num, a.tokenizer, a.seed, a.steps, a.temperature,
                              not a.no_restrict)
    elif a.prior_command == "edit":
        files = pc.cmd_edit(a.prior, a.image, a.box, a.paint, a.out, a.labels, a.tokenizer, a.seed, a.steps,
                            a.temperature)
    else:
        files = pc.cmd_predict(a.prior, a.frames, a.out, a.horizon, a.labels, a.tokenizer, a.steps, a.temperature,
                               a.seed)
    print(f"wrote {len(files)} image(s) to {a.out}")
    return 0


_COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "report": _cmd_report, "compare": _cmd_compare, "study": _cmd_study,
             "encode": _cmd_encode, "decode": _cmd_decode, "prior": _cmd_prior}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sgcvq` console script and `python -m sgcvq`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        # Bad input (paths, options, config values): one clear line, argparse's exit status.
        print(f"sgcvq {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sgcvq {args.command}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        if exc.name not in _TRAIN_EXTRA:
            raise
        print(f"sgcvq {args.command}: error: the training application needs the `train` extra "
              f"({exc.name} is missing): pip install --no-build-isolation -e '.[train]'", file=sys.stderr)
        return 2


# modules of the `train` extra (pyproject.toml): the library imports none of them
_TRAIN_EXTRA = {"yaml", "matplotlib", "PIL", "tensorboard"}


if __name__ == "__main__":
    sys.exit(main())
