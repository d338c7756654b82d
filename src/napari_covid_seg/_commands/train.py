"""``napari-covid-seg train | finetune | learn | evaluate | compare``: the bundled trainer.

Each subcommand imports torch only when it runs. User errors (bad dataset,
missing model, bad config) print one message on stderr and return 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import CovidSegError


def register(subparsers: Any) -> None:
    """Add ``train``, ``finetune``, ``learn``, ``evaluate`` and ``compare`` to subparsers."""
    p = subparsers.add_parser(
        "train",
        help="train a model version from a YAML config",
        description="Train a segmentation model and register the best epoch as a model version.",
    )
    p.add_argument("--config", required=True, help="training config (training/configs/*.yaml)")
    p.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="DIR",
        help="dataset folder (repeatable; replaces the config's data)",
    )
    p.add_argument("--model", default=None, help="architecture (res_att_unet, res_unet, ...)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--name", default=None, help="model store name (default: the config's name)")
    p.add_argument(
        "--out", default=None, metavar="DIR", help="run folder (default runs/<name>-<time>)"
    )
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue from DIR/last (needs --out)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MIN",
        help="wall-time budget in minutes (the lr schedule follows it)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1 is fastest on a busy, shared CPU)",
    )
    p.add_argument("--no-register", action="store_true", help="do not add it to the model store")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model version on corrected data",
        description="Fine-tune an existing model version on new (corrected) data with a "
        "replay sample of earlier data; registers a child version.",
    )
    p.add_argument("--base", required=True, help="model name ('default', ...) or folder path")
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="corrected dataset folder (repeatable)",
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-4)")
    p.add_argument(
        "--replay",
        action="append",
        default=[],
        metavar="DIR",
        help="earlier training data to mix in (repeatable)",
    )
    p.add_argument("--replay-fraction", type=float, default=None, help="default 0.3")
    p.add_argument("--config", default=None, help="optional YAML with fine-tuning settings")
    p.add_argument("--name", default=None, help="store name of the new version")
    p.add_argument("--out", default=None, metavar="DIR")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--rotate-k",
        type=int,
        default=None,
        help="np.rot90 k for 2D slice folders (COVID-SemiSeg JPEGs: -1)",
    )
    p.add_argument("--replay-rotate-k", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    _policy_arguments(p)
    p.set_defaults(func=run_finetune)

    p = subparsers.add_parser(
        "learn",
        help="learn from corrected slices within one volume and re-segment the rest",
        description="Fine-tune a copy of the model on the reviewed/corrected slices of one CT "
        "(plus replay where given), segment the same CT again and write new labels: the "
        "listed slices keep their labels, every other slice takes the new prediction. "
        "Nothing is registered; the image is never written.",
    )
    p.add_argument("image", help="the CT (NIfTI or DICOM folder)")
    p.add_argument("labels", help="the current (corrected) lesion labels, NIfTI, same grid")
    p.add_argument(
        "--slices",
        required=True,
        help="reviewed/corrected axial slice indices (source order), e.g. 10,14,20-22",
    )
    p.add_argument("--out", required=True, help="output labels NIfTI (never the input)")
    p.add_argument("--model", default="default", help="model name or folder (default: default)")
    p.add_argument("--epochs", type=int, default=None, help="default 8")
    p.add_argument("--lr", type=float, default=None, help="default 1e-4")
    p.add_argument("--replay", action="append", default=[], metavar="DIR")
    p.add_argument("--replay-rotate-k", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    _policy_arguments(p)
    p.set_defaults(func=run_learn)

    p = subparsers.add_parser(
        "evaluate",
        help="metrics of a model version on a labelled dataset",
        description="Dice, IoU, precision, sensitivity, specificity and accuracy (pooled over "
        "pixels and per-slice mean) at each slice's native resolution, through the path a user "
        "runs: each case as HU NIfTI with a true affine, read and segmented like `segment`.",
    )
    p.add_argument("--model", required=True, help="model name ('default', ...) or folder path")
    p.add_argument("--data", action="append", required=True, metavar="DIR")
    p.add_argument(
        "--rotate-k",
        type=int,
        default=0,
        help="np.rot90 k for 2D slice folders (COVID-SemiSeg JPEGs: -1)",
    )
    p.add_argument(
        "--transpose",
        action="store_true",
        help="transpose 2D slices after rotating (COVID-SemiSeg JPEGs: their true anatomy)",
    )
    p.add_argument("--lesion-labels", default=None, help="comma-separated lesion labels, e.g. 1,2")
    p.add_argument("--device", default="auto")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument(
        "--subset",
        choices=("all", "val"),
        default="all",
        help="val: only the slices the model was validated on (from its provenance)",
    )
    p.add_argument(
        "--no-lung-restrict",
        dest="lung_restrict",
        action="store_false",
        help="keep predictions outside the lungs (as `segment --no-lung-restrict`)",
    )
    p.add_argument("--tta", action="store_true", help="test-time flips (as `segment --tta`)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser(
        "compare",
        help="train the four architectures with identical settings (paper Table 3)",
        description="Train unet, res_unet, attention_unet and res_att_unet with one config and "
        "write the comparison table as markdown and CSV.",
    )
    p.add_argument("--config", required=True, help="training/configs/compare.yaml")
    p.add_argument("--data", action="append", default=None, metavar="DIR")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--models", default=None, help="comma-separated subset of the four models")
    p.add_argument(
        "--out", default=None, metavar="DIR", help="output folder (default runs/compare)"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=run_compare)


def _policy_arguments(p: Any) -> None:
    """Fine-tuning policy flags (defaults: training.finetune.POLICY_DEFAULTS)."""
    from ..training.finetune_run import add_policy_arguments

    add_policy_arguments(p)


def parse_slices(text: str) -> list[int]:
    """``"3,5,8-10"`` -> ``[3, 5, 8, 9, 10]`` (ValueError for anything else)."""
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
            lo, hi = int(a), int(b)
            if hi < lo:
                raise ValueError(f"bad slice range {part!r}")
            out.update(range(lo, hi + 1))
        else:
            out.add(int(part))
    if not out:
        raise ValueError("no slices given (e.g. --slices 10,14,20-22)")
    return sorted(out)


# -- progress ------------------------------------------------------------------------------------


class _Bar:
    """A tqdm bar over epochs fed by trainer events (stderr)."""

    def __init__(self, label: str = "") -> None:
        self.bar: Any = None
        self.label = label

    def __call__(self, e: dict[str, Any]) -> None:
        from tqdm import tqdm

        kind = e.get("event")
        prefix = f"{e['model']}: " if "model" in e else self.label
        if kind == "start":
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(
                total=e["n_epochs"],
                initial=e["epoch"],
                desc=prefix or "train",
                unit="epoch",
                file=sys.stderr,
                dynamic_ncols=True,
            )
        elif kind == "epoch" and self.bar is not None:
            post = {"loss": f"{e['train_loss']:.4f}"}
            if e.get("val_dice") is not None:
                post["val_dice"] = f"{e['val_dice']:.3f}"
                post["best"] = f"{e['best_val_dice']:.3f}@{e['best_epoch']}"
            self.bar.set_postfix(post)
            self.bar.update(e["epoch"] - self.bar.n)
        elif kind == "end" and self.bar is not None:
            self.bar.close()
            self.bar = None


def _error(err: Exception) -> int:
    print(f"napari-covid-seg: error: {err}", file=sys.stderr)
    return 1


# -- commands ------------------------------------------------------------------------------------


def run_train(args: argparse.Namespace) -> int:
    try:
        from ..training.config import load_config
        from ..training.trainer import Trainer, default_out_dir

        cfg = load_config(
            args.config,
            data=tuple(args.data) if args.data else None,
            model=args.model,
            epochs=args.epochs,
            name=args.name,
            device=args.device,
            time_budget_minutes=args.time_budget,
            num_threads=args.threads,
        )
        if args.model:
            cfg = cfg.replace(model_kwargs={})
        if args.resume and not args.out:
            raise CovidSegError("--resume needs --out DIR (the run folder to continue)")
        out = Path(args.out) if args.out else default_out_dir(cfg.name)
        trainer = Trainer(
            cfg,
            out_dir=out,
            progress=_Bar(),
            handle_signals=True,
            resume=args.resume,
            register=not args.no_register,
        )
        result = trainer.fit()
    except (CovidSegError, ValueError) as err:
        return _error(err)
    _print_result(result)
    return 0


def _print_result(result: Any) -> None:
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports
        return
    m = result.best_metrics
    where = result.info.path if result.info is not None else result.best_dir
    dice = m.get("val_dice")
    print(
        f"{result.stopped}: {result.epochs_run} epochs, best epoch {result.best_epoch}"
        + (f", val Dice {dice:.4f}" if dice is not None else "")
        + f"\nmodel version: {where}\nrun folder: {result.out_dir} (result.json, metrics.csv, "
        "curves.png)"
    )


def run_finetune(args: argparse.Namespace) -> int:
    try:
        from ..training.config import TrainConfig, load_config
        from ..training.finetune import FINETUNE_DEFAULTS, finetune, resolve_policy
        from ..training.finetune_run import (
            MIN_SAMPLES_PER_EPOCH,
            PASSES_PER_EPOCH,
            samples_per_epoch,
        )

        config = load_config(args.config) if args.config else TrainConfig(**FINETUNE_DEFAULTS)
        if config.samples_per_epoch is None:  # a few slices: several passes per epoch
            spe = samples_per_epoch(
                args.data,
                MIN_SAMPLES_PER_EPOCH,
                val_fraction=config.val_fraction,
                replay_fraction=resolve_policy(replay_fraction=args.replay_fraction)[
                    "replay_fraction"
                ],
                has_replay=bool(args.replay),
                passes=PASSES_PER_EPOCH,
            )
            config = config.replace(samples_per_epoch=spe)
        result = finetune(
            args.base,
            args.data,
            epochs=args.epochs,
            lr=args.lr,
            replay_dirs=args.replay,
            replay_fraction=args.replay_fraction,
            config=config,
            name=args.name,
            out_dir=args.out,
            device=args.device,
            rotate_k=args.rotate_k,
            replay_rotate_k=args.replay_rotate_k,
            patience=args.patience,
            freeze_bn=args.freeze_bn,
            train=args.train_part,
            l2sp=args.l2sp,
            progress=_Bar("finetune"),
            handle_signals=True,
            return_result=True,
        )
    except (CovidSegError, ValueError) as err:
        return _error(err)
    _print_result(result)
    if result.info is not None:
        print(f"registered {result.info.name} (parent {result.info.parent})")
    return 0


def run_learn(args: argparse.Namespace) -> int:
    """``learn``: within-volume learning from the command line."""
    from pathlib import Path

    try:
        slices = parse_slices(args.slices)
    except ValueError as err:
        return _error(err)
    if Path(args.out).resolve() in (Path(args.image).resolve(), Path(args.labels).resolve()):
        return _error(ValueError("--out must be a new file, not the image or the labels"))
    try:
        import torch

        from ..io import read_volume, write_mask
        from ..training.learn_in_volume import learn_in_volume

        if args.threads:
            torch.set_num_threads(args.threads)
        image = read_volume(args.image, as_mask=False)
        labels = read_volume(args.labels, as_mask=True)
        if labels.data.shape != image.data.shape:
            raise ValueError(
                f"the labels' shape {labels.data.shape} differs from the image's {image.data.shape}"
            )
        bar = _Bar("learn")
        result = learn_in_volume(
            image,
            labels.data,
            slices,
            args.model,
            epochs=args.epochs,
            lr=args.lr,
            replay_dirs=args.replay,
            replay_rotate_k=args.replay_rotate_k,
            device=args.device,
            seed=args.seed,
            freeze_bn=args.freeze_bn,
            train=args.train_part,
            l2sp=args.l2sp,
            progress=lambda e: bar(e) if e.get("event") != "segment" else None,
        )
        write_mask(args.out, result.labels, image)
    except (CovidSegError, ValueError) as err:
        return _error(err)
    t = result.timings
    print(
        f"learned from {len(slices)} slice(s) (+{result.n_replay} replay), {result.epochs} "
        f"epochs in {t.get('train', 0):.1f} s; re-segmented in {t.get('segment', 0):.1f} s; "
        f"{len(result.changed_slices)} slice(s) changed, {len(result.protected_slices)} kept\n"
        f"wrote {args.out}"
    )
    for message in result.messages:
        print(f"note: {message}", file=sys.stderr)
    return 0


def format_metrics(result: dict[str, Any]) -> str:
    """A readable metric table: pooled and per-slice mean for the six metrics."""
    from ..training.metrics import METRIC_NAMES

    lines = [f"{'metric':<12} {'pooled':>8} {'per-slice':>10}"]
    for name in METRIC_NAMES:
        lines.append(f"{name:<12} {result[name]:>8.4f} {result[name + '_mean']:>10.4f}")
    lines.append(
        f"{result['n_slices']} slices, {result.get('resolution', 'native')} resolution, "
        f"threshold {result.get('threshold', 0.5)}"
    )
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    try:
        from ..training.evaluate import evaluate_model

        labels = None
        if args.lesion_labels:
            labels = [int(v) for v in args.lesion_labels.split(",") if v.strip()]
        result = evaluate_model(
            args.model,
            args.data,
            rotate_k=args.rotate_k,
            transpose=args.transpose,
            lesion_labels=labels,
            device=args.device,
            threshold=args.threshold,
            subset=args.subset,
            restrict_to_lungs=args.lung_restrict,
            tta=args.tta,
        )
    except (CovidSegError, ValueError) as err:
        return _error(err)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"model {result['model']} on {', '.join(result['data'])}")
        print(format_metrics(result))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    try:
        from ..models import MODEL_NAMES
        from ..training.compare import run_comparison
        from ..training.config import load_config, read_yaml

        cfg = load_config(
            args.config,
            data=tuple(args.data) if args.data else None,
            epochs=args.epochs,
            device=args.device,
            num_threads=args.threads,
        )
        models = read_yaml(args.config).get("compare_models") or list(MODEL_NAMES[::-1])
        if args.models:
            models = [m.strip() for m in args.models.split(",") if m.strip()]
        out = Path(args.out) if args.out else Path("runs") / "compare"
        rows = run_comparison(cfg, out, models=models, progress=_Bar(), handle_signals=True)
    except (CovidSegError, ValueError) as err:
        return _error(err)
    from ..training.compare import markdown_table

    print(markdown_table(rows))
    print(f"tables: {out / 'comparison.md'}, {out / 'comparison.csv'}")
    return 0
