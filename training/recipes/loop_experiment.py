"""The human-in-the-loop, measured: does fine-tuning on a few corrected slices segment better?

Simulates the user of the Fine-tune widget without a GUI, seeded and repeatable:

1. Start from a model version (default: the bundled ``default``) and read, from
   its ``model.json`` provenance, the data it was trained on and its
   validation split. The validation slices were never trained on: they play
   the expert-corrected slices a user would export ("held-out pool").
2. For each k (slices "corrected" by the user) and each repeat, draw k slices
   of the pool at random (seeded; the k-sets of one repeat are nested),
   fine-tune the base on them exactly as the widget's worker does
   (:func:`napari_covid_seg.training.finetune.finetune`: its own validation
   split of the k slices, early stopping), with and without replay of the
   base's training slices, and evaluate on the rest of the pool.
3. The score is the pooled Dice (and per-slice mean Dice) at each slice's
   native resolution. The base model is scored on the same remaining slices,
   so every fine-tuned number has a paired baseline: "delta" = fine-tuned minus
   base on identical slices.

Caveat (stated in the report too): the base chose its best epoch on this very
pool, so its Dice there is optimistically biased; that makes an improvement
harder to show, not easier.

Outputs: JSON on stdout and in ``--json`` (default ``docs/loop_experiment.json``),
a plot (``--plot``, default ``docs/images/loop_experiment.png``) and a
markdown report (``--md``, default ``docs/loop_experiment.md``).

Run (from the repository root)::

    python training/recipes/loop_experiment.py --repeats 2 --epochs 6 --patience 3
        # one learning rate: ~20 min on a busy 2-core CPU, less on an idle one
    python training/recipes/loop_experiment.py --repeats 2 --epochs 6 --patience 3 \
        --lr 1e-4,3e-5      # what docs/loop_experiment.md shows (twice as long)
    python training/recipes/loop_experiment.py --from-json docs/loop_experiment.json
        # redraw the plot and the report only
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]


# -- data -----------------------------------------------------------------------------------------


def base_provenance(base: str) -> dict[str, Any]:
    """Path, name, training data, rotate_k, input size and validation ids of a model version."""
    from napari_covid_seg.errors import DatasetError
    from napari_covid_seg.models.metadata import read_model_json
    from napari_covid_seg.models.store import ModelStore

    path = ModelStore().resolve(base)
    meta = read_model_json(path)
    prov = meta.get("provenance") or {}
    split = prov.get("split") or {}
    val_ids = [str(v) for v in split.get("val_ids") or []]
    sources = [s for s in prov.get("data") or [] if isinstance(s, dict)]
    if not val_ids or not sources:
        raise DatasetError(
            f"{path}: model.json records no validation split or training data; the loop "
            "experiment needs a model trained by this package's trainer"
        )
    config = prov.get("config") or {}
    return {
        "path": str(path),
        "name": meta.get("name") or Path(path).name,
        "data": str(sources[0].get("path")),
        "layout": sources[0].get("layout"),
        "rotate_k": int(sources[0].get("rotate_k") or config.get("rotate_k") or 0),
        "input_size": int((meta.get("preprocessing") or {}).get("input_size", 256)),
        "val_ids": val_ids,
        "val_dice_recorded": (meta.get("metrics") or {}).get("val_dice"),
    }


def image_files(folder: Path) -> dict[str, Path]:
    """``images/<id>.*`` of a 2D slice folder, by id."""
    from napari_covid_seg.io.images2d import IMAGE_SUFFIXES

    return {
        p.stem: p
        for p in sorted((folder / "images").iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    }


def subset_folder(src: Path, ids: Sequence[str], dst: Path) -> Path:
    """A 2D slice folder ``dst`` holding only ``ids`` of ``src`` (symlinks, else copies)."""
    images = image_files(src)
    masks = {p.stem: p for p in (src / "masks").iterdir()}
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for i in ids:
        for sub, table in (("images", images), ("masks", masks)):
            target = dst / sub / table[i].name
            try:
                os.symlink(table[i].resolve(), target)
            except OSError:
                shutil.copy2(table[i], target)
    return dst


def slice_counts(model: Any, data: Any, threshold: float, device: Any) -> dict[str, np.ndarray]:
    """Per-slice confusion counts ``[TP, FP, FN, TN]`` at native resolution, by slice id."""
    import torch
    import torch.nn.functional as F

    from napari_covid_seg.training.evaluate import predict_slices
    from napari_covid_seg.training.metrics import confusion

    in_ch = int(getattr(getattr(model, "config", None), "in_channels", 3))
    probs = predict_slices(model.to(device), data.images, device=device, in_channels=in_ch)
    out = {}
    for sid, p, truth in zip(data.slice_ids, probs, data.native_masks, strict=True):
        t = torch.from_numpy(p)[None, None]
        up = F.interpolate(t, size=truth.shape, mode="bilinear", align_corners=False)[0, 0]
        out[sid] = confusion(up.numpy() > threshold, truth)
    return out


def scores(counts: dict[str, np.ndarray], ids: Sequence[str]) -> dict[str, float]:
    """Pooled Dice and per-slice mean Dice over ``ids``."""
    from napari_covid_seg.training.metrics import summarize

    s = summarize(np.stack([counts[i] for i in ids]))
    return {"dice": s["dice"], "dice_mean": s["dice_mean"]}


# -- the experiment --------------------------------------------------------------------------------


def run_experiment(
    args: argparse.Namespace, argv_used: Sequence[str] | None = None
) -> dict[str, Any]:
    import torch

    from napari_covid_seg.models.checkpoint import load_model_version
    from napari_covid_seg.models.store import ModelStore
    from napari_covid_seg.training.config import TrainConfig
    from napari_covid_seg.training.datasets import load_slice_folder
    from napari_covid_seg.training.finetune import FINETUNE_DEFAULTS, finetune
    from napari_covid_seg.training.trainer import resolve_device
    from napari_covid_seg.training.worker import samples_per_epoch

    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = base_provenance(args.base)
    data_root = Path(args.data or base["data"])
    if not data_root.is_absolute() and not data_root.exists():
        data_root = REPO / data_root
    all_ids = list(image_files(data_root))
    pool = [i for i in base["val_ids"] if i in all_ids]
    train_ids = [i for i in all_ids if i not in set(base["val_ids"])]
    ks = sorted({int(k) for k in args.ks.split(",")})
    if max(ks) >= len(pool):
        raise SystemExit(f"k must stay below the held-out pool size ({len(pool)}); got {ks}")
    device = resolve_device(args.device)
    rk = base["rotate_k"]
    lrs = [float(v) for v in str(args.lr).split(",") if v.strip()]
    config = TrainConfig(**FINETUNE_DEFAULTS).replace(
        epochs=args.epochs,
        lr=lrs[0],
        patience=args.patience,
        batch_size=args.batch_size,
    )
    work = Path(tempfile.mkdtemp(prefix="loop_experiment."))
    log = print if args.verbose else (lambda *a, **k: None)
    try:
        store = ModelStore(root=work / "store")
        pool_dir = subset_folder(data_root, pool, work / "pool")
        replay_dir = subset_folder(data_root, train_ids, work / "replay")
        held = load_slice_folder(
            pool_dir, input_size=base["input_size"], rotate_k=rk, keep_native=True
        )
        mv = load_model_version(base["path"], device=device)
        threshold = float(mv.preprocessing.get("threshold", 0.5))
        base_counts = slice_counts(mv.model, held, threshold, device)
        del mv
        runs: list[dict[str, Any]] = []
        for r in range(args.repeats):
            order = list(np.random.default_rng(args.seed * 1000 + r).permutation(pool))
            for k in ks:
                ft_ids, eval_ids = order[:k], order[k:]
                base_s = scores(base_counts, eval_ids)
                if k == 0:
                    runs.append(
                        {
                            "k": 0,
                            "repeat": r,
                            "lr": None,
                            "replay": None,
                            "ft_ids": [],
                            "eval_ids": eval_ids,
                            "base": base_s,
                            "finetuned": base_s,
                            "delta_dice": 0.0,
                            "delta_dice_mean": 0.0,
                        }
                    )
                    continue
                ft_dir = subset_folder(data_root, ft_ids, work / f"ft_r{r}_k{k}")
                for lr, replay in [(lr, rep) for lr in lrs for rep in (False, True)]:
                    tag = f"r{r}-k{k}-lr{lr:g}-{'replay' if replay else 'new'}"
                    t0 = time.perf_counter()
                    spe = samples_per_epoch(
                        [ft_dir],
                        args.min_samples_per_epoch,
                        val_fraction=config.val_fraction,
                        replay_fraction=args.replay_fraction,
                        has_replay=replay,
                    )
                    res = finetune(
                        base["path"],
                        [ft_dir],
                        config=config.replace(samples_per_epoch=spe, lr=lr),
                        seed=args.seed + r,
                        replay_dirs=[replay_dir] if replay else (),
                        replay_fraction=args.replay_fraction,
                        rotate_k=rk,
                        replay_rotate_k=rk,
                        name=tag,
                        out_dir=work / "runs" / tag,
                        device=str(device),
                        store=store,
                        return_result=True,
                    )
                    child = load_model_version(res.best_dir, device=device)
                    eval_data = held.subset([held.slice_ids.index(i) for i in eval_ids])
                    counts = slice_counts(child.model, eval_data, threshold, device)
                    del child
                    ft_s = scores(counts, eval_ids)
                    row = {
                        "k": k,
                        "repeat": r,
                        "lr": lr,
                        "replay": replay,
                        "ft_ids": ft_ids,
                        "eval_ids": eval_ids,
                        "base": base_s,
                        "finetuned": ft_s,
                        "delta_dice": ft_s["dice"] - base_s["dice"],
                        "delta_dice_mean": ft_s["dice_mean"] - base_s["dice_mean"],
                        "epochs_run": res.epochs_run,
                        "best_epoch": res.best_epoch,
                        "stopped": res.stopped,
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                    result = json.loads(Path(res.result_json).read_text(encoding="utf-8"))
                    row["n_replay"] = result["split"].get("n_replay", 0)
                    row["n_train"] = result["split"].get("n_train")
                    row["n_val"] = result["split"].get("n_val")
                    runs.append(row)
                    log(
                        f"[{time.perf_counter() - t_start:6.0f}s] {tag}: base "
                        f"{base_s['dice']:.3f} -> {ft_s['dice']:.3f} "
                        f"({row['delta_dice']:+.3f}), {res.epochs_run} epochs, "
                        f"{row['seconds']:.0f}s",
                        file=sys.stderr,
                    )
                    shutil.rmtree(work / "runs" / tag, ignore_errors=True)
                    store.remove(res.info.name)
        summary = summarize_runs(runs, ks, lrs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "experiment": "loop: fine-tune on k corrected slices, evaluate on the rest of the pool",
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "base": {k: v for k, v in base.items() if k != "val_ids"},
        "pool_ids": pool,
        "n_pool": len(pool),
        "n_replay_source": len(train_ids),
        "settings": {
            "ks": ks,
            "lrs": lrs,
            "repeats": args.repeats,
            "command": "python training/recipes/loop_experiment.py "
            + " ".join(sys.argv[1:] if argv_used is None else argv_used),
            "seed": args.seed,
            "replay_fraction": args.replay_fraction,
            "min_samples_per_epoch": args.min_samples_per_epoch,
            "finetune_config": {
                k: v
                for k, v in config.to_dict().items()
                if k not in ("data", "name", "description")
            },
            "metric": "Dice pooled over the pixels of the remaining pool slices, native "
            "resolution; dice_mean = mean of per-slice Dice",
        },
        "summary": summary,
        "runs": runs,
        "machine": machine_info(device),
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def summarize_runs(
    runs: list[dict[str, Any]], ks: Sequence[int], lrs: Sequence[float]
) -> list[dict[str, Any]]:
    """Mean and standard deviation over repeats, per (k, lr, replay)."""
    out = []
    for k in ks:
        arms = [(None, None)] if k == 0 else [(lr, rep) for lr in lrs for rep in (False, True)]
        for lr, replay in arms:
            rows = [r for r in runs if r["k"] == k and r["replay"] == replay and r["lr"] == lr]
            if not rows:
                continue

            def stat(values: list[float]) -> dict[str, float]:
                arr = np.asarray(values, dtype=float)
                return {
                    "mean": float(arr.mean()),
                    "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
                }

            out.append(
                {
                    "k": k,
                    "lr": lr,
                    "replay": replay,
                    "n_repeats": len(rows),
                    "n_eval": len(rows[0]["eval_ids"]),
                    "base_dice": stat([r["base"]["dice"] for r in rows]),
                    "finetuned_dice": stat([r["finetuned"]["dice"] for r in rows]),
                    "delta_dice": stat([r["delta_dice"] for r in rows]),
                    "base_dice_mean": stat([r["base"]["dice_mean"] for r in rows]),
                    "finetuned_dice_mean": stat([r["finetuned"]["dice_mean"] for r in rows]),
                    "delta_dice_mean": stat([r["delta_dice_mean"] for r in rows]),
                    "improved": sum(r["delta_dice"] > 0 for r in rows),
                    "epochs_run": stat([r.get("epochs_run", 0) for r in rows]),
                    "seconds": stat([r.get("seconds", 0.0) for r in rows]),
                }
            )
    return out


def machine_info(device: Any) -> dict[str, Any]:
    import torch

    from napari_covid_seg.training.trainer import cpu_has_fast_bf16

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "device": str(device),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_fast_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# -- outputs -------------------------------------------------------------------------------------


ARM_STYLES = (("tab:blue", "o-"), ("tab:orange", "^-"), ("tab:green", "s-"), ("tab:red", "D-"))


def arm_label(lr: float | None, replay: bool | None, n_lrs: int) -> str:
    if replay is None:
        return "base"
    text = "replay" if replay else "no replay"
    return f"lr {lr:g}, {text}" if n_lrs > 1 else text


def plot(report: dict[str, Any], path: Path) -> Path:
    """Dice on the remaining pool slices vs k, and the paired change, per arm."""
    from matplotlib.figure import Figure

    rows = report["summary"]
    lrs = report["settings"]["lrs"]
    arms = [(lr, rep) for lr in lrs for rep in (False, True)]
    fig = Figure(figsize=(10, 4.0), dpi=110, layout="constrained")
    ax, ax_d = fig.subplots(1, 2)
    k0 = next((r for r in rows if r["k"] == 0), None)
    base_rows = [r for r in rows if r["k"] > 0 and (r["lr"], r["replay"]) == arms[0]]
    if k0 is not None:
        base_rows = [k0, *base_rows]
    ax.errorbar(
        [r["k"] for r in base_rows],
        [r["base_dice"]["mean"] for r in base_rows],
        yerr=[r["base_dice"]["std"] for r in base_rows],
        fmt="s:",
        color="tab:gray",
        capsize=3,
        label="base (same slices)",
    )
    width = 0.5 / max(1, len(arms))
    for i, (arm, (color, style)) in enumerate(zip(arms, ARM_STYLES, strict=False)):
        pick = [r for r in rows if r["k"] > 0 and (r["lr"], r["replay"]) == arm]
        label = "fine-tuned, " + arm_label(*arm, len(lrs))
        xs = [r["k"] for r in pick]
        ax.errorbar(
            ([k0["k"]] if k0 else []) + xs,
            ([k0["finetuned_dice"]["mean"]] if k0 else [])
            + [r["finetuned_dice"]["mean"] for r in pick],
            yerr=([0.0] if k0 else []) + [r["finetuned_dice"]["std"] for r in pick],
            fmt=style,
            color=color,
            capsize=3,
            label=label,
        )
        shift = (i - (len(arms) - 1) / 2) * width
        for r in pick:
            per = [
                x["delta_dice"]
                for x in report["runs"]
                if x["k"] == r["k"] and (x["lr"], x["replay"]) == arm
            ]
            ax_d.scatter([r["k"] + shift] * len(per), per, s=12, color=color, alpha=0.45)
        ax_d.errorbar(
            [k + shift for k in xs],
            [r["delta_dice"]["mean"] for r in pick],
            yerr=[r["delta_dice"]["std"] for r in pick],
            fmt=style,
            color=color,
            capsize=3,
            label=arm_label(*arm, len(lrs)),
        )
    ax.set_xlabel("k = corrected slices fine-tuned on")
    ax.set_ylabel("Dice on the remaining held-out slices")
    ax.set_xticks(report["settings"]["ks"])
    ax.legend(fontsize=7)
    ax.set_title("Segment → correct → fine-tune → segment", fontsize=10)
    ax_d.axhline(0.0, color="k", lw=0.8)
    ax_d.set_xlabel("k")
    ax_d.set_ylabel("Dice change vs base on the same slices")
    ax_d.set_xticks([k for k in report["settings"]["ks"] if k > 0])
    ax_d.legend(fontsize=7)
    ax_d.set_title("Paired change: per repeat (dots), mean ± sd", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def markdown(report: dict[str, Any], plot_path: Path | None, md_path: Path) -> str:
    """The report: what was done, the table, the machine, the caveats."""
    s = report["settings"]
    cfg = s["finetune_config"]
    base = report["base"]
    m = report["machine"]
    recorded = base.get("val_dice_recorded")
    lines = [
        "# The loop, measured: segment → correct → fine-tune → segment better?",
        "",
        f"Generated by `{s['command'].strip()}` ({report['date']}, "
        f"{report['seconds'] / 60:.1f} min). Re-run it to reproduce (seeded); the raw "
        "numbers, per run, are in [`loop_experiment.json`](loop_experiment.json).",
        "",
        "## What is simulated",
        "",
        f"* **Base model**: `{base['name']}` (validation Dice recorded in its model.json: "
        + (f"{recorded:.3f}" if recorded is not None else "n/a")
        + f"), trained on {report['n_replay_source']} slices of "
        f"`{Path(base['data']).name if base.get('data') else '?'}` "
        "(COVID-SemiSeg / MedSeg, expert lesion masks).",
        f"* **The corrected slices**: its {report['n_pool']} validation slices, read from the "
        "model's provenance and never trained on. They stand in for slices a user segmented, "
        "corrected to the expert mask and exported.",
        f"* **Design**: for k in {s['ks']} and {s['repeats']} seeded repeats, k of the "
        f"{report['n_pool']} pool slices are drawn (nested within a repeat), the base is "
        "fine-tuned on them exactly as the Fine-tune widget's worker does "
        "(`training.finetune.finetune`, which itself keeps "
        f"{cfg['val_fraction']:.0%} of the k slices for early stopping and best-epoch "
        f"selection), and scored on the **remaining {report['n_pool']} − k** pool slices. "
        f"With only {report['n_pool']} held-out slices, k stays small (0, 2, 5, 8 instead of "
        "0, 5, 10, 20), the evaluation set shrinks as k grows, and every fine-tuned score is "
        "paired with the base's score on the identical slices (Δ).",
        f"* **Replay**: on = {s['replay_fraction']:.0%} of the training slices drawn from the "
        f"base's {report['n_replay_source']} training slices; off = corrected slices only.",
        f"* **Fine-tuning settings**: learning rate {', '.join(f'{v:g}' for v in s['lrs'])} "
        f"({cfg['optimizer']}, {cfg['scheduler']} decay), at most {cfg['epochs']} epochs, "
        f"early stopping patience {cfg['patience']}, batch {cfg['batch_size']}, at least "
        f"{s['min_samples_per_epoch']} samples per epoch (the few slices resampled with "
        f"augmentation, as the widget does), loss {cfg['loss']}, augmentation "
        f"{cfg['augment']}.",
        f"* **Metric**: {s['metric']}.",
        "",
        "## Results",
        "",
        "| k | lr | replay | eval slices | base Dice | fine-tuned Dice | Δ Dice (paired) | "
        "Δ per-slice Dice | runs better | epochs | s/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(d: dict[str, float]) -> str:
        return f"{d['mean']:.3f} ± {d['std']:.3f}"

    for r in report["summary"]:
        replay = "—" if r["replay"] is None else ("on" if r["replay"] else "off")
        lr = "—" if r["lr"] is None else f"{r['lr']:g}"
        better = "—" if r["k"] == 0 else f"{r['improved']}/{r['n_repeats']}"
        lines.append(
            f"| {r['k']} | {lr} | {replay} | {r['n_eval']} | {ms(r['base_dice'])} | "
            f"{ms(r['finetuned_dice'])} | {r['delta_dice']['mean']:+.3f} ± "
            f"{r['delta_dice']['std']:.3f} | {r['delta_dice_mean']['mean']:+.3f} | "
            f"{better} | {r['epochs_run']['mean']:.1f} | {r['seconds']['mean']:.0f} |"
        )
    lines += ["", "(mean ± standard deviation over the repeats)", ""]
    if plot_path is not None:
        rel = os.path.relpath(plot_path, md_path.parent)
        lines += [f"![Dice vs k]({rel})", ""]
    lines += ["## Reading it", "", *findings(report), ""]
    lines += [
        "## What the Fine-tune widget does about it",
        "",
        "* It registers every fine-tuned version but, by default, selects it in the Segment "
        "widget only if it does not score worse than the base on the same validation slices "
        '("Use it only if validation Dice improves"), and always offers a one-click Roll '
        "back.",
        "* It defaults to the lower learning rate (3e-5) and turns replay of the base's "
        "training data on where that data is on the computer: in the table both limit the "
        "damage of fine-tuning on very few slices.",
        "* The comparison it shows (old vs new Dice) is computed on the few corrected slices "
        "it held out for validation, so with a handful of slices it is noisy: correct and "
        "export more slices (8 or more) before fine-tuning.",
        "",
    ]
    lines += [
        "## Caveats",
        "",
        "* The base model picked its best epoch on this same pool, so its pool Dice is "
        "optimistically biased (that makes an improvement harder to show, not easier).",
        f"* Tiny samples: {report['n_pool']} − k evaluation slices and {s['repeats']} repeats; "
        "differences smaller than about one standard deviation are noise.",
        "* The pool slices come from the same source and distribution as the base's training "
        "data (the dataset has no patient ids). A user's own scanner and protocol differ "
        "more, which is where fine-tuning is expected to help most; this experiment measures "
        "the in-distribution case only.",
        "",
        "## Machine",
        "",
        f"* device: {m['device']}" + (f" ({m['gpu']})" if m.get("gpu") else ""),
        f"* CPU: {m['cpu']} ({m['cpu_count']} logical cores, torch threads "
        f"{m['torch_threads']}, native bf16: {m['cpu_bf16']})",
        f"* torch {m['torch']}, Python {m['python']}, {m['platform']}",
        f"* total wall time: {report['seconds'] / 60:.1f} min, on a machine shared with "
        "other jobs (timings are indicative)",
        "",
    ]
    return "\n".join(lines)


def findings(report: dict[str, Any]) -> list[str]:
    """Plain sentences computed from the summary (no hand-written claims)."""
    out = []
    lrs = report["settings"]["lrs"]
    rows = [r for r in report["summary"] if r["k"] > 0]
    k0 = next((r for r in report["summary"] if r["k"] == 0), None)
    if k0 is not None:
        out.append(
            f"* Base model on all {k0['n_eval']} pool slices: Dice {k0['base_dice']['mean']:.3f}."
        )
    for lr in lrs:
        for replay in (False, True):
            pick = [r for r in rows if r["replay"] == replay and r["lr"] == lr]
            if not pick:
                continue
            parts = [
                f"k={r['k']}: {r['delta_dice']['mean']:+.3f} "
                f"({r['improved']}/{r['n_repeats']} runs better)"
                for r in pick
            ]
            out.append(
                f"* Paired Dice change, {arm_label(lr, replay, 2)}: " + "; ".join(parts) + "."
            )
    if rows:
        best = max(rows, key=lambda r: r["delta_dice"]["mean"])
        mean, sd = best["delta_dice"]["mean"], best["delta_dice"]["std"]
        if mean < 0.01:
            verdict = (
                "no arm improved Dice by 0.01 or more on average: on this data, fine-tuning "
                "on a few corrected slices does not segment the other slices better"
            )
        elif best["n_repeats"] < 2:
            verdict = "a single repeat: no estimate of its spread"
        elif mean > sd:
            verdict = "larger than its standard deviation over repeats"
        else:
            verdict = "within its standard deviation over repeats: not a reliable improvement"
        worst = min(rows, key=lambda r: r["delta_dice"]["mean"])
        out.append(
            f"* Largest mean change: {mean:+.3f} at k={best['k']} "
            f"({arm_label(best['lr'], best['replay'], 2)}); {verdict}."
        )
        out.append(
            f"* Largest mean loss: {worst['delta_dice']['mean']:+.3f} at k={worst['k']} "
            f"({arm_label(worst['lr'], worst['replay'], 2)})."
        )
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="default", help="model name or folder (default: default)")
    p.add_argument(
        "--data", default=None, help="the base's 2D training folder (default: from its provenance)"
    )
    p.add_argument("--ks", default="0,2,5,8", help="comma-separated k values")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--lr",
        default="3e-5",
        help="learning rate(s), comma-separated (default 3e-5, the Fine-tune widget's default)",
    )
    p.add_argument("--patience", type=int, default=4)
    p.add_argument(
        "--min-samples-per-epoch",
        type=int,
        default=16,
        help="resample a small training set to this many samples per epoch (as the widget)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--replay-fraction", type=float, default=0.3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=str(REPO / "docs" / "loop_experiment.json"))
    p.add_argument("--plot", default=str(REPO / "docs" / "images" / "loop_experiment.png"))
    p.add_argument("--md", default=str(REPO / "docs" / "loop_experiment.md"))
    p.add_argument("--no-write", action="store_true", help="print the JSON only")
    p.add_argument(
        "--from-json",
        default=None,
        metavar="PATH",
        help="redraw the plot and the report from a saved JSON without training",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from napari_covid_seg.errors import CovidSegError
    from napari_covid_seg.models.metadata import dumps

    args = build_parser().parse_args(argv)
    json_path, plot_path, md_path = Path(args.json), Path(args.plot), Path(args.md)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        plot(report, plot_path)
        md_path.write_text(markdown(report, plot_path, md_path), encoding="utf-8")
        return 0
    try:
        report = run_experiment(args, argv)
    except CovidSegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    text = dumps(report)
    print(text)
    if not args.no_write:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text + "\n", encoding="utf-8")
        plot(report, plot_path)
        md_path.write_text(markdown(report, plot_path, md_path), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
