"""Train the bundled click model: the default model warm-started with guidance channels.

Usage (from the repository root; about 35 minutes on 1 CPU thread)::

    python training/recipes/train_click_model.py --out runs/click \\
        --dest src/napari_covid_seg/bundled_models/click --minutes 33

What it does (DeepEdit / RITM style, see ``docs/click_to_fix.md``):

* the bundled default model with its first convolution extended to 6 input
  channels (image x 3 + positive clicks + negative clicks + current mask),
  the new kernels zero: at step 0 it *is* the default model;
* the default model's data, split (40 train / 10 validation, seed 0),
  lung-ROI preprocessing and augmentation (``training/configs/default.yaml``);
* per batch: with probability 0.3 no clicks and an empty mask channel (keeps
  the automatic performance); otherwise the current mask is the model's own
  no-grad prediction, sometimes with a few random initial clicks, then 1..5
  rounds of "click in the interior of the largest error region, re-predict"
  (no grad), and the training step on the last state; Dice + BCE loss;
* every few steps, validation on the 10 slices: mean Dice at 0 and 3
  simulated clicks; the kept weights are those with the best Dice at 3
  clicks whose 0-click Dice is within 0.01 of the default model's;
* the result saved as an fp16 model version (``--dest``) with provenance;
  then ``benchmarks/bench_clicks.py`` measures it on the user's path and
  ``--record-benchmark bench.json [bench_start_default.json]`` stores those
  figures in its metrics.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "covid-semiseg" / "train"
DATA_REF = {"root": "shared", "path": "data/covid-semiseg/train"}
BASE = ROOT / "src" / "napari_covid_seg" / "bundled_models" / "default"
CONFIG = ROOT / "training" / "configs" / "default.yaml"
DESCRIPTION = (
    "Click model: the default ResAttUnet with 3 guidance input channels (positive clicks, "
    "negative clicks, current mask), warm-started from the bundled default and trained with "
    "simulated clicks on the same 40 COVID-SemiSeg/MedSeg slices (10 for validation). With no "
    "clicks it is an automatic model. Research use only; see docs/click_to_fix.md."
)
ROUND_P = (0.3, 0.25, 0.2, 0.15, 0.1)  # click rounds 1..5
FREEZE_BN = [True]  # set from --freeze-bn in main()


def guidance_batch(
    clicks: list[list[Any]], mask: np.ndarray, radius: float, size: int
) -> torch.Tensor:
    """``(N, 3, S, S)`` float32: positive disks, negative disks, current mask."""
    from napari_covid_seg.correction.clicks import click_maps

    out = np.zeros((len(clicks), 3, size, size), np.float32)
    for i, cs in enumerate(clicks):
        pos = [(c.row, c.col) for c in cs if c.positive]
        neg = [(c.row, c.col) for c in cs if not c.positive]
        out[i, :2] = click_maps((size, size), pos, neg, radius)
        out[i, 2] = mask[i]
    return torch.from_numpy(out)


def forward(model: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, 1, S, S)``: image ``x`` ``(N, 1, S, S)``, guidance ``g`` ``(N, 3, S, S)``."""
    inp = torch.cat([x.expand(-1, 3, -1, -1), g], dim=1).contiguous(
        memory_format=torch.channels_last
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(inp).float()


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> np.ndarray:
    was = model.training
    model.eval()
    out = (forward(model, x, g)[:, 0] > 0).numpy()
    if was:
        model.train()
        train_mode(model, FREEZE_BN[0])
    return out


def train_mode(model: torch.nn.Module, freeze_bn: bool) -> None:
    """Training mode; with ``freeze_bn`` BatchNorm keeps the base model's running statistics.

    Fine-tuning a converged model with batches of 8 would otherwise move the
    statistics the automatic (0-click) predictions depend on.
    """
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def click_round(clicks: list[list[Any]], pred: np.ndarray, truth: np.ndarray) -> None:
    from napari_covid_seg.correction.clicks import next_click

    for i in range(len(clicks)):
        c = next_click(pred[i], truth[i])
        if c is not None:
            clicks[i].append(c)


@torch.no_grad()
def validate(
    model: torch.nn.Module, x: torch.Tensor, truth: np.ndarray, radius: float, n_max: int = 3
) -> list[float]:
    """Mean per-slice Dice after 0..n_max simulated clicks (model grid)."""
    from napari_covid_seg.correction.clicks import dice

    size = x.shape[-1]
    clicks: list[list[Any]] = [[] for _ in range(len(x))]
    pred = predict(model, x, torch.zeros(len(x), 3, size, size))
    scores = [float(np.mean([dice(p, t) for p, t in zip(pred, truth, strict=True)]))]
    for _ in range(n_max):
        click_round(clicks, pred, truth)
        pred = predict(model, x, guidance_batch(clicks, pred, radius, size))
        scores.append(float(np.mean([dice(p, t) for p, t in zip(pred, truth, strict=True)])))
    return scores


def main(args: argparse.Namespace) -> dict[str, Any]:
    from napari_covid_seg.correction.clicks import random_clicks
    from napari_covid_seg.models.checkpoint import load_model_version, save_model_version
    from napari_covid_seg.models.guidance import add_guidance_channels, click_preprocessing
    from napari_covid_seg.training.config import DEFAULT_AUGMENT, read_yaml
    from napari_covid_seg.training.datasets import load_datasets, split_dataset
    from napari_covid_seg.training.losses import build_loss

    torch.set_num_threads(args.threads)
    FREEZE_BN[0] = args.freeze_bn
    t_start = time.perf_counter()
    budget = 60.0 * args.minutes
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    g_aug = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.jsonl", "a", buffering=1)

    def emit(rec: dict[str, Any]) -> None:
        rec["t"] = round(time.perf_counter() - t_start, 1)
        log.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)

    cfg = read_yaml(CONFIG)
    base_mv = load_model_version(BASE)
    data = load_datasets(
        [DATA], input_size=cfg["input_size"], rotate_k=cfg["rotate_k"], roi=cfg["roi"]
    )
    train_idx, val_idx, split = split_dataset(data, cfg["val_fraction"], cfg["split_seed"])
    want = base_mv.provenance["split"]["val_ids"]
    if split["val_ids"] != want:
        raise SystemExit(f"split {split['val_ids']} differs from the default model's {want}")
    images = torch.from_numpy(data.images.astype(np.float32))[:, None]
    masks = torch.from_numpy(data.masks.astype(np.float32))[:, None]
    size = images.shape[-1]
    augment = {**DEFAULT_AUGMENT, **cfg["augment"]}
    radius = float(args.radius)

    model = add_guidance_channels(base_mv.model.float()).to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg["loss"])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=cfg["weight_decay"])
    x_val, t_val = images[val_idx], data.masks[val_idx].astype(bool)
    base_scores = validate(model, x_val, t_val, radius)
    floor = base_scores[0] - 0.01
    emit({"event": "start", "val_dice_at_clicks": base_scores, "floor_0": floor})
    best: dict[str, Any] = {"score": -1.0, "step": 0, "scores": base_scores}
    best_state = copy.deepcopy(model.state_dict())
    step, epoch = 0, 0
    order = np.empty(0, np.int64)
    train_t0 = time.perf_counter()
    while True:
        spent = time.perf_counter() - t_start
        if spent > budget or (out / "STOP").exists():
            break
        if len(order) < args.batch_size:
            order = np.concatenate([order, rng.permutation(train_idx)])
            epoch += 1
        index, order = order[: args.batch_size], order[args.batch_size :]
        x, y = augment_batch_(images[index], masks[index], augment, g_aug)
        truth = y[:, 0].numpy() > 0.5
        n = len(index)
        zeros = torch.zeros(n, 3, size, size)
        rounds = 0
        if rng.random() < args.p_auto:
            g = zeros
        else:
            pred = predict(model, x, zeros)
            clicks: list[list[Any]] = [[] for _ in range(n)]
            if rng.random() < args.p_random:
                for i in range(n):
                    clicks[i] += random_clicks(
                        truth[i], rng, int(rng.integers(1, 4)), int(rng.integers(0, 3))
                    )
                pred = predict(model, x, guidance_batch(clicks, pred, radius, size))
            rounds = int(rng.choice(len(ROUND_P), p=ROUND_P)) + 1
            for r in range(rounds):
                click_round(clicks, pred, truth)
                g = guidance_batch(clicks, pred, radius, size)
                if r < rounds - 1:
                    pred = predict(model, x, g)
        frac = min(1.0, (time.perf_counter() - train_t0) / max(1.0, budget - (train_t0 - t_start)))
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        lr *= 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = lr
        train_mode(model, args.freeze_bn)
        loss = loss_fn(forward(model, x, g), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 5 == 0:
            emit(
                {
                    "event": "step",
                    "step": step,
                    "epoch": epoch,
                    "loss": float(loss.detach()),
                    "lr": lr,
                    "rounds": rounds,
                }
            )
        if step % args.val_every == 0:
            scores = validate(model, x_val, t_val, radius)
            ok = scores[0] >= floor
            if ok and scores[3] > best["score"]:
                best = {"score": scores[3], "step": step, "epoch": epoch, "scores": scores}
                best_state = copy.deepcopy(model.state_dict())
            emit(
                {
                    "event": "val",
                    "step": step,
                    "val_dice_at_clicks": scores,
                    "ok_0": ok,
                    "best_step": best["step"],
                }
            )
    seconds = time.perf_counter() - t_start
    model.load_state_dict(best_state)
    torch.save(best_state, out / "best_state.pt")
    emit({"event": "done", "steps": step, "best": best, "seconds": seconds})
    prov = {
        "parent": "default",
        "parent_version": base_mv.version,
        "warm_start": "default model, conv1 extended to 6 input channels, new kernels zero",
        "data_fingerprint": data.fingerprint,
        "data": [
            {**{k: v for k, v in s.items() if k != "path"}, "path": DATA_REF} for s in data.sources
        ],
        "split": split,
        "recipe": "training/recipes/train_click_model.py",
        "training": {
            "steps": step,
            "epochs": epoch,
            "best_step": best["step"],
            "seconds": round(seconds, 1),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "freeze_bn": args.freeze_bn,
            "p_auto": args.p_auto,
            "p_random": args.p_random,
            "click_rounds_p": list(ROUND_P),
            "augment": cfg["augment"],
            "loss": cfg["loss"],
            "selection": "best mean Dice at 3 simulated clicks on the validation slices "
            "(model grid) with 0-click Dice >= the default's - 0.01",
            "val_dice_at_clicks_model_grid": {"default": base_scores, "best": best["scores"]},
        },
        "machine": f"shared 2-core x86-64 CPU with avx512_bf16, no GPU; {args.threads} torch "
        "thread(s), bf16 autocast",
        "data_origin": "MedSeg COVID-19 CT segmentation dataset as repackaged as COVID-SemiSeg "
        "(Inf-Net, Fan et al. 2020), training split, 50 slices",
        "weights_note": "trained in fp32 with bf16 autocast; shipped as fp16",
    }
    if args.dest:
        save_model_version(
            args.dest,
            model,
            preprocessing=click_preprocessing(base_mv.preprocessing, int(radius)),
            provenance=prov,
            metrics={"val_slices": len(val_idx), "best_step": best["step"]},
            name="click",
            description=DESCRIPTION,
            license=base_mv.license,
            dtype="float16",
            overwrite=True,
        )
    return {"best": best, "steps": step, "seconds": seconds}


def record_benchmark(dest: Path, bench: dict[str, Any], bench_default: dict | None) -> None:
    """Store ``bench_clicks.py``'s figures in the version's metrics (weights unchanged)."""
    from napari_covid_seg.models.checkpoint import load_model_version, save_model_version

    mv = load_model_version(dest)
    keys = ("dice_at_clicks", "noc85", "noc90", "reached85", "reached90", "ms_per_click")
    metrics = {
        **mv.metrics,
        "path": "one-slice HU NIfTI, true affine -> reader -> segment (0 clicks) -> "
        "fix_slice per simulated click; native size (benchmarks/bench_clicks.py)",
        **{k: bench[k] for k in keys},
        "val_dice_mean": bench["dice_at_clicks"]["0"],
        "default_model_val_dice_mean": bench["default_model_dice"],
        "brush_voxels": bench["brush_voxels"],
        "machine": bench["machine"]["cpu"] + ", 2 cores (shared)",
    }
    if bench_default is not None:
        metrics["dice_at_clicks_from_default_mask"] = bench_default["dice_at_clicks"]
    save_model_version(
        dest,
        mv.model,
        preprocessing=mv.preprocessing,
        provenance=mv.provenance,
        metrics=metrics,
        name=mv.name,
        description=mv.description,
        license=mv.license,
        version=mv.version,
        dtype="float16",
        overwrite=True,
    )


def augment_batch_(
    x: torch.Tensor, y: torch.Tensor, params: dict[str, Any], g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The default config's augmentation (image and mask together)."""
    from napari_covid_seg.training.augment import augment_batch

    return augment_batch(x, y, params, g)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/click")
    ap.add_argument("--dest", default="")
    ap.add_argument("--minutes", type=float, default=33.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--radius", type=int, default=5)
    ap.add_argument("--p-auto", type=float, default=0.3)
    ap.add_argument("--p-random", type=float, default=0.2)
    ap.add_argument("--val-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--record-benchmark",
        nargs="+",
        metavar="JSON",
        help="instead of training: store bench_clicks.py output(s) (start=model, then "
        "optionally start=default) in --dest's metrics",
    )
    a = ap.parse_args()
    if a.record_benchmark:
        runs = [json.loads(Path(f).read_text()) for f in a.record_benchmark]
        record_benchmark(Path(a.dest), runs[0], runs[1] if len(runs) > 1 else None)
    else:
        print(json.dumps(main(a), indent=1, default=str))
