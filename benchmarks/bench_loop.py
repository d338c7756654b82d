"""The loop benchmark: does correcting k slices and fine-tuning segment the rest better?

Simulates the user of the Fine-tune widget on real data, GUI-free and seeded
(:mod:`napari_covid_seg.training.loop`). Data: the 50 shared expert-labelled
slices (``../shared/data/covid-semiseg/train``), as one-slice HU NIfTI volumes
with their true anatomy; the base model's provenance says which 40 it trained
on and which 10 it validated on.

* **Shifted source** (``--variants``): every slice through a scanner-like
  variant the base never saw (``sharp_kernel_noise``: a sharper reconstruction
  kernel plus 60 HU noise; ``thick_slice_blur``; ``full_field``: the chest
  inside a scanner's whole field of view). The user corrects k slices (drawn,
  nested per repeat, from the base's 40 training slices under the variant) and
  fine-tunes with the product's defaults; base and child are scored on the 10
  validation slices under the same variant. "Recovered" = the child's gain
  divided by what the shift cost the base (its Dice on the clean slices minus
  on the shifted ones).
* **In distribution** (``--ks-in``): k of the 10 validation slices, unshifted,
  are the corrected ones; base and child are scored on the remaining 10 - k.

Every score runs the user path (NIfTI -> reader -> segment, defaults). Prints
the JSON on stdout; writes ``--json``, ``--plot`` and ``--md``.

Run (repository root)::

    python benchmarks/bench_loop.py --repeats 3                       # defaults
    python benchmarks/bench_loop.py --arms default,bn_train,decoder --ks 3,10 \\
        --ks-in 3 --repeats 2 --no-write --json /tmp/ablation.json    # the policy ablation
    python benchmarks/bench_loop.py --from-json docs/loop_experiment.json   # redraw only
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "covid-semiseg" / "train"

#: Named fine-tuning policies (options of ``training.finetune.finetune``); "default" = product.
ARMS: dict[str, dict[str, Any]] = {
    "default": {},
    "old": {"freeze_bn": False, "l2sp": 0.0, "lr": 3e-5},  # the settings before issue 11
    "bn_train": {"freeze_bn": False},
    "decoder": {"train": "decoder"},
    "no_l2sp": {"l2sp": 0.0},
    "no_replay": {"replay_fraction": 0.0},
    "lr3e-4": {"lr": 3e-4},
    "lr3e-5": {"lr": 3e-5},
    "epochs20": {"epochs": 20},
    "epochs30": {"epochs": 30},
    "passes1": {"passes": 1},
    "passes8": {"passes": 8},
    "min_replay0": {"min_replay": 0},
    "min_replay16": {"min_replay": 16},  # before: a small set resampled to 16 samples per epoch
    "bn_train_e20": {"freeze_bn": False, "epochs": 20},
    "l2sp100": {"l2sp": 100.0},
    "bn_train_l2sp100": {"freeze_bn": False, "l2sp": 100.0},
}


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def base_split(base: str) -> dict[str, Any]:
    """The base version's path, name, training ids and validation ids (from its model.json)."""
    from napari_covid_seg.models.metadata import read_model_json
    from napari_covid_seg.models.store import ModelStore

    path = ModelStore().resolve(base)
    meta = read_model_json(path)
    prov = meta.get("provenance") or {}
    val = [str(v) for v in (prov.get("split") or {}).get("val_ids") or []]
    if not val:
        raise SystemExit(f"{path}: model.json records no validation split")
    return {
        "path": str(path),
        "name": meta.get("name") or Path(path).name,
        "version": meta.get("version"),
        "val_ids": val,
        "val_dice_recorded": (meta.get("metrics") or {}).get("val_dice"),
        "roi": (meta.get("preprocessing") or {}).get("roi"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from napari_covid_seg.training import loop

    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = base_split(args.base)
    # A private copy: the model measured cannot change under a long run (a shared tree).
    import shutil

    snapshot = Path(tempfile.mkdtemp(prefix="bench-loop-base-")) / Path(base["path"]).name
    shutil.copytree(base["path"], snapshot)
    base["source_path"], base["path"] = base["path"], str(snapshot)
    data = Path(args.data)
    all_ids = sorted(p.stem for p in (data / "images").iterdir())
    val_ids = [i for i in base["val_ids"] if i in all_ids]
    train_ids = [i for i in all_ids if i not in set(val_ids)]
    arms = args.arms.split(",")
    ks = [int(k) for k in args.ks.split(",") if k]
    ks_in = [int(k) for k in args.ks_in.split(",") if k]
    runs: list[dict[str, Any]] = []
    sources: dict[str, Any] = {}
    options: dict[str, Any] = {
        k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None
    }
    replay = _replay(base, data)  # loaded once: the same for every trial
    t_start_ = t_start

    def report() -> dict[str, Any]:
        return {
            "benchmark": "loop",
            "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "command": "python benchmarks/bench_loop.py " + " ".join(args.argv),
            "seconds": round(time.perf_counter() - t_start_, 1),
            "base": base,
            "settings": {
                "arms": {a: ARMS[a] for a in arms},
                "ks": ks,
                "ks_in": ks_in,
                "repeats": args.repeats,
                "repeats_done": len({r["repeat"] for r in runs}),
                "seed": args.seed,
                "overrides": options,
                "defaults": _defaults(),
            },
            "sources": sources,
            "summary": summarize(runs),
            "runs": runs,
            "machine": machine(args),
            "code": code_state(),
        }

    def partial() -> None:  # after every trial: an interrupted run keeps what it measured
        if args.partial:
            from napari_covid_seg.io.atomic import atomic_write_text
            from napari_covid_seg.models.metadata import dumps

            atomic_write_text(args.partial, dumps(report()) + "\n")

    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        clean_eval = loop.labelled_cases(data, val_ids, "tight_crop", seed=args.seed)
        base_clean = loop.score(base["path"], clean_eval, device=args.device)
        shifted: dict[str, tuple[Any, list, dict]] = {}
        for variant in [v for v in args.variants.split(",") if v]:
            pool_cases = loop.labelled_cases(data, train_ids, variant, seed=args.seed)
            pool = loop.write_cases(Path(tmp) / variant / "pool", pool_cases)
            eval_cases = loop.labelled_cases(data, val_ids, variant, seed=args.seed)
            b = loop.pooled(loop.score(base["path"], eval_cases, device=args.device), val_ids)
            clean = loop.pooled(base_clean, val_ids)
            sources[variant] = {
                "base_clean": clean,
                "base_shifted": b,
                "shift_cost": clean["dice"] - b["dice"],
                "n_pool": len(train_ids),
                "n_eval": len(val_ids),
            }
            shifted[variant] = (pool, eval_cases, b)
            _log(args, f"{variant}: base {clean['dice']:.3f} clean -> {b['dice']:.3f} shifted")
        in_pool = loop.write_cases(Path(tmp) / "in" / "pool", clean_eval) if ks_in else None
        for rep in range(args.repeats):  # repeats outermost: a stopped run has whole repeats
            order = list(np.random.default_rng([args.seed, rep]).permutation(train_ids))
            for variant, (pool, eval_cases, b) in shifted.items():
                for k in ks:
                    for arm in arms:
                        r = loop.trial(
                            base["path"],
                            pool,
                            order[:k],
                            eval_cases,
                            workdir=Path(tmp) / variant / f"r{rep}-k{k}-{arm}",
                            replay_dir=data,
                            replay_rotate_k=-1,
                            seed=args.seed + rep,
                            device=args.device,
                            replay_data=replay,
                            **{**ARMS[arm], **options},
                        )
                        child = loop.pooled(r.pop("counts"), val_ids)
                        delta = child["dice"] - b["dice"]
                        cost = sources[variant]["shift_cost"]
                        runs.append(
                            {
                                "source": variant,
                                "arm": arm,
                                "k": k,
                                "repeat": rep,
                                "base_dice": b["dice"],
                                "dice": child["dice"],
                                "dice_mean": child["dice_mean"],
                                "delta_dice": delta,
                                "recovered": delta / cost if cost > 0.005 else None,
                                **r,
                            }
                        )
                        partial()
                        _log(args, f"{variant} r{rep} k={k} {arm}: {delta:+.3f} ({r['seconds']} s)")
            order_in = list(np.random.default_rng([args.seed, 100 + rep]).permutation(val_ids))
            for k in ks_in:
                rest = order_in[k:]
                ev = [c for c in clean_eval if c[0] in set(rest)]
                b = loop.pooled(base_clean, rest)
                for arm in arms:
                    r = loop.trial(
                        base["path"],
                        in_pool,
                        order_in[:k],
                        ev,
                        workdir=Path(tmp) / "in" / f"r{rep}-k{k}-{arm}",
                        replay_dir=data,
                        replay_rotate_k=-1,
                        seed=args.seed + rep,
                        device=args.device,
                        replay_data=replay,
                        **{**ARMS[arm], **options},
                    )
                    child = loop.pooled(r.pop("counts"), rest)
                    runs.append(
                        {
                            "source": "in_distribution",
                            "arm": arm,
                            "k": k,
                            "repeat": rep,
                            "base_dice": b["dice"],
                            "dice": child["dice"],
                            "dice_mean": child["dice_mean"],
                            "delta_dice": child["dice"] - b["dice"],
                            "recovered": None,
                            "n_eval": len(rest),
                            **r,
                        }
                    )
                    partial()
                    _log(args, f"in r{rep} k={k} {arm}: {child['dice'] - b['dice']:+.3f}")
    return report()


def code_state() -> dict[str, Any]:
    """The commit measured and the tracked files that differed from it (a shared tree)."""
    import subprocess

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "modified": git("diff", "--name-only").split()}


def _replay(base: dict[str, Any], data: Path) -> Any:
    """The base's training folder loaded as fine-tuning loads replay (its size and ROI)."""
    from napari_covid_seg.models.metadata import read_model_json
    from napari_covid_seg.training.datasets import load_datasets

    pre = read_model_json(Path(base["path"])).get("preprocessing") or {}
    return load_datasets(
        [data], input_size=int(pre.get("input_size", 256)), rotate_k=-1, roi=pre.get("roi")
    )


def _defaults() -> dict[str, Any]:
    from napari_covid_seg.training.finetune import FINETUNE_DEFAULTS, POLICY_DEFAULTS

    keys = ("epochs", "lr", "batch_size", "val_fraction", "select_metric", "augment")
    return {**{k: FINETUNE_DEFAULTS[k] for k in keys}, **POLICY_DEFAULTS}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sd, min and max over repeats per (source, arm, k)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["source"], r["arm"], r["k"]), []).append(r)
    out = []
    for (source, arm, k), rs in groups.items():
        rec = [r["recovered"] for r in rs if r["recovered"] is not None]
        out.append(
            {
                "source": source,
                "arm": arm,
                "k": k,
                "n_repeats": len(rs),
                "base_dice": _stats([r["base_dice"] for r in rs]),
                "dice": _stats([r["dice"] for r in rs]),
                "delta_dice": _stats([r["delta_dice"] for r in rs]),
                "recovered": _stats(rec) if rec else None,
                "improved": sum(r["delta_dice"] > 0 for r in rs),
                "seconds": _stats([r["seconds"] for r in rs]),
            }
        )
    return out


def machine(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    info = {
        "device": args.device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available() and args.device != "cpu":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _log(args: argparse.Namespace, text: str) -> None:
    if args.verbose:
        print(text, file=sys.stderr, flush=True)


# -- outputs -------------------------------------------------------------------------------------

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def plot(report: dict[str, Any], path: Path) -> Path:
    """Per source: Dice change vs k (dots per repeat, mean ± sd), the shift's cost as a line."""
    from matplotlib.figure import Figure

    from napari_covid_seg.io.atomic import atomic_write_bytes

    sources = list(dict.fromkeys(r["source"] for r in report["summary"]))
    arms = list(report["settings"]["arms"])
    fig = Figure(figsize=(5.0 * len(sources), 4.0), dpi=110, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(sources)))
    for ax, source in zip(axes, sources, strict=True):
        for i, arm in enumerate(arms):
            rows = sorted(
                (r for r in report["summary"] if r["source"] == source and r["arm"] == arm),
                key=lambda r: r["k"],
            )
            shift = (i - (len(arms) - 1) / 2) * 0.18
            color = COLORS[i % len(COLORS)]
            for r in rows:
                per = [
                    x["delta_dice"]
                    for x in report["runs"]
                    if (x["source"], x["arm"], x["k"]) == (source, arm, r["k"])
                ]
                ax.scatter([r["k"] + shift] * len(per), per, s=12, color=color, alpha=0.45)
            ax.errorbar(
                [r["k"] + shift for r in rows],
                [r["delta_dice"]["mean"] for r in rows],
                yerr=[r["delta_dice"]["std"] for r in rows],
                fmt="o-",
                color=color,
                capsize=3,
                label=arm,
            )
        ax.axhline(0.0, color="k", lw=0.8)
        info = report["sources"].get(source)
        if info:
            cost = info["shift_cost"]
            ax.axhline(cost, color="tab:gray", ls="--", lw=1, label=f"shift cost {cost:.3f}")
            ax.axhline(0.75 * cost, color="tab:gray", ls=":", lw=1, label="3/4 of it")
            b, c = info["base_shifted"]["dice"], info["base_clean"]["dice"]
            title = f"{source}: base {b:.3f} (clean {c:.3f})"
        else:
            title = "in distribution (rest of the validation slices)"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("k = corrected slices")
        ax.set_ylabel("Dice change vs base (same slices)")
        ax.set_xticks(sorted({r["k"] for r in report["summary"] if r["source"] == source}))
        ax.legend(fontsize=7)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def markdown(report: dict[str, Any], plot_path: Path | None, md_path: Path) -> str:
    """The report's tables (computed, no hand-written claims)."""
    s = report["settings"]
    m = report["machine"]
    lines = [
        "## Results (generated)",
        "",
        f"`{report['command'].strip()}` — {report['date']}, {report['seconds'] / 60:.1f} min; "
        f"base `{report['base']['name']}` (version {report['base']['version']}); "
        f"{s['repeats']} repeats; fine-tuning defaults {json.dumps(s['defaults'])}"
        + (f"; overrides {s['overrides']}" if s["overrides"] else "")
        + ".",
        "",
        "| source | base Dice clean → shifted | shift cost |",
        "|---|---|---|",
    ]
    for name, info in report["sources"].items():
        lines.append(
            f"| {name} | {info['base_clean']['dice']:.3f} → {info['base_shifted']['dice']:.3f} | "
            f"{info['shift_cost']:.3f} |"
        )
    lines += [
        "",
        "| source | arm | k | base Dice | fine-tuned Dice | Δ Dice mean ± sd (min, max) | "
        "recovered | runs better | s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(report["summary"], key=lambda r: (r["source"], r["arm"], r["k"])):
        d = r["delta_dice"]
        rec = r["recovered"]
        lines.append(
            f"| {r['source']} | {r['arm']} | {r['k']} | {r['base_dice']['mean']:.3f} | "
            f"{r['dice']['mean']:.3f} | {d['mean']:+.3f} ± {d['std']:.3f} "
            f"({d['min']:+.3f}, {d['max']:+.3f}) | "
            + (f"{rec['mean']:.0%}" if rec else "—")
            + f" | {r['improved']}/{r['n_repeats']} | {r['seconds']['mean']:.0f} |"
        )
    if plot_path is not None:
        lines += ["", f"![Dice change vs k]({os.path.relpath(plot_path, md_path.parent)})"]
    lines += [
        "",
        f"Machine: {m['device']}, {m['cpu_count']} logical cores, torch threads "
        f"{m['torch_threads']}"
        + (f", {m['gpu']}" if m.get("gpu") else "")
        + f"; torch {m['torch']}, Python {m['python']}.",
        "",
    ]
    return "\n".join(lines)


MARK_BEGIN = "<!-- bench_loop results: begin -->"
MARK_END = "<!-- bench_loop results: end -->"


def write_markdown(report: dict[str, Any], plot_path: Path | None, md_path: Path) -> None:
    """Replace the generated block between the markers of ``md_path`` (or append it)."""
    from napari_covid_seg.io.atomic import atomic_write_text

    block = f"{MARK_BEGIN}\n{markdown(report, plot_path, md_path)}\n{MARK_END}"
    text = md_path.read_text(encoding="utf-8") if md_path.is_file() else ""
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = (text.rstrip() + "\n\n" if text else "") + block + "\n"
    atomic_write_text(md_path, text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="default")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--variants", default="sharp_kernel_noise", help="shifted sources (comma list)")
    p.add_argument("--ks", default="1,3,5,10", help="k on the shifted sources")
    p.add_argument("--ks-in", default="1,3,5", help="k in distribution ('' to skip)")
    p.add_argument("--arms", default="default", help=f"policies: {', '.join(ARMS)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override for every arm")
    p.add_argument("--lr", type=float, default=None, help="override for every arm")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=str(REPO / "docs" / "loop_experiment.json"))
    p.add_argument("--plot", default=str(REPO / "docs" / "images" / "loop_experiment.png"))
    p.add_argument("--md", default=str(REPO / "docs" / "loop_experiment.md"))
    p.add_argument("--no-write", action="store_true", help="print the JSON only (and --json)")
    p.add_argument(
        "--partial", default=None, metavar="PATH", help="rewrite the report here after every trial"
    )
    p.add_argument("--from-json", default=None, metavar="PATH", help="redraw plot and tables")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from napari_covid_seg.io.atomic import atomic_write_text
    from napari_covid_seg.models.metadata import dumps

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    json_path, plot_path, md_path = Path(args.json), Path(args.plot), Path(args.md)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        plot(report, plot_path)
        write_markdown(report, plot_path, md_path)
        return 0
    if not Path(args.data).is_dir():
        print(json.dumps({"benchmark": "loop", "skipped": f"no data at {args.data}"}))
        return 0
    report = run(args)
    text = dumps(report)
    print(text)
    atomic_write_text(json_path, text + "\n")
    if not args.no_write:
        plot(report, plot_path)
        write_markdown(report, plot_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
