"""Click to fix, measured in clicks: Dice after k simulated clicks, NoC@85/90, ms per click.

GUI-free and seeded; prints one JSON object. The path is the one a user
runs: every labelled slice becomes HU NIfTI with its true anatomy, is read
back by the plugin's reader and segmented by ``segment`` with default
settings (the automatic mask the user starts from, the lung ROI); then
clicks are simulated on the native slice, DIOS/DeepEdit style (the interior
point of the largest error region, positive on missed lesion, negative on
false positive; ``--click-rule max_distance``: RITM's farthest-from-border
point of all errors), each followed by :meth:`ClickSegmenter.fix_slice` with the
current mask and all clicks so far.

Keys: ``dice_at_clicks`` (clicks -> mean Dice; 0 = the automatic mask),
``noc85``/``noc90`` (mean clicks to reach Dice 0.85/0.90, capped at
``--max-clicks``, the standard NoC; ``reached85``/``reached90`` the fraction
that got there), ``ms_per_click`` (median of ``fix_slice``, 1 and 2 torch
threads; the lung ROI is computed once per slice and cached),
``brush_voxels`` (the brush-only baseline: voxels a user would paint,
fixing the automatic mask's largest error regions first, voxel by voxel,
to reach the same per-slice Dice as k clicks, or 0.85/0.90),
``--start default`` corrects the default model's mask instead of the click
model's own (segment with the default, then fix with clicks);
``zero_click`` (the click model with no clicks through ``fix_slice`` vs the
same model through ``segment`` without lung restriction: identical masks
expected) and ``default_model_dice`` (the default model through ``segment``).

Usage::

    python benchmarks/bench_clicks.py [--data DIR] [--model click] [--subset val|all]

``--data``: an nnU-Net v2 raw folder (every axial slice with lesion is a
case; the ROI is the volume's) or a 2D slice folder (``--transpose`` /
``--rotate-k`` as in ``evaluate``; COVID-SemiSeg needs ``--transpose``, the
default). ``--subset val`` (default) keeps the model's validation slices.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "covid-semiseg" / "train"
REPORT = (0, 1, 3, 5, 10)


def brush_voxels(auto: np.ndarray, truth: np.ndarray, target: float) -> int | None:
    """Voxels to paint from ``auto`` to reach Dice >= ``target`` (largest error regions first).

    Each error region (missed lesion or false positive, 8-connected) is fixed
    voxel by voxel, largest region first; None if even a perfect mask misses
    (never: fixing everything gives Dice 1).
    """
    from scipy import ndimage

    a, t = auto.astype(bool), truth.astype(bool)
    tp, fp, fn = int((a & t).sum()), int((a & ~t).sum()), int((~a & t).sum())

    def d(tp_: int, fp_: int, fn_: int) -> float:
        den = 2 * tp_ + fp_ + fn_
        return 1.0 if den == 0 else 2.0 * tp_ / den

    if d(tp, fp, fn) >= target:
        return 0
    regions = []
    for err, missed in ((t & ~a, True), (a & ~t, False)):
        lab, n = ndimage.label(err, structure=np.ones((3, 3), bool))
        sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        regions += [(int(s), missed) for s in sizes]
    painted = 0
    for size, missed in sorted(regions, reverse=True):
        m = np.arange(1, size + 1)
        if missed:
            dice = 2.0 * (tp + m) / (2 * (tp + m) + fp + (fn - m))
        else:
            dice = 2.0 * tp / (2 * tp + (fp - m) + fn)
        hit = np.flatnonzero(dice >= target)
        if len(hit):
            return painted + int(hit[0]) + 1
        painted += size
        if missed:
            tp, fn = tp + size, fn - size
        else:
            fp -= size
    return painted


def load_cases(args: argparse.Namespace, val_ids: list[str] | None) -> list[dict[str, Any]]:
    """``[{name, volume}, truth (z, y, x)]`` cases: 2D slices as one-slice HU volumes."""
    from napari_covid_seg.training.acquisition import slice_volume, windowed_to_hu
    from napari_covid_seg.training.datasets import detect_layout
    from napari_covid_seg.training.evaluate import _nnunet_cases, load_labelled_slices

    root = Path(args.data)
    ids = val_ids if args.subset == "val" else None
    if detect_layout(root) == "nnunet_v2":
        return [{"name": n, "volume": v, "truth": t} for n, v, t in _nnunet_cases(root, None, ids)]
    if ids is not None:
        have = {p.stem for p in (root / "images").iterdir()}
        ids = [i for i in ids if i in have]
    cases = []
    for name, img, msk in load_labelled_slices(
        root, rotate_k=args.rotate_k, transpose=args.transpose, ids=ids
    ):
        hu = windowed_to_hu(img) if img.dtype == np.uint8 or img.max() <= 255 else img
        cases.append({"name": name, "volume": slice_volume(hu), "truth": msk[None]})
    return cases


def through_reader(volume: Any, tmp: Path, name: str) -> Any:
    """The volume written as NIfTI and read back by the plugin's reader (the user's file)."""
    from napari_covid_seg.io import read_volume, write_volume

    path = tmp / f"{name}.nii.gz"
    write_volume(path, volume.data, volume)
    out = read_volume(path, as_mask=False)
    path.unlink()
    return out


def slices_of(case: dict[str, Any], auto_mask: np.ndarray, roi_box: Any) -> list[dict]:
    """Canonical axial slices with lesion: image, truth, automatic mask, spacing."""
    from napari_covid_seg.inference.preprocess import slice_reorientation
    from napari_covid_seg.io.orientation import to_canonical

    vol = case["volume"]
    r = slice_reorientation(vol)
    img = to_canonical(vol.data, r)
    truth = to_canonical(np.asarray(case["truth"]), r)
    auto = to_canonical(auto_mask, r)
    spacing = tuple(float(vol.spacing[a]) for a in r.axes)
    out = []
    for z in range(img.shape[0]):
        t = truth[z] == 1
        if (truth[z] == 255).any() or not t.any():
            continue
        out.append(
            {
                "name": f"{case['name']}:{z}" if img.shape[0] > 1 else case["name"],
                "image": np.ascontiguousarray(img[z]),
                "truth": t,
                "auto": auto[z] > 0,
                "spacing_yx": spacing[1:],
                "thickness": spacing[0],
                "intensity": vol.intensity,
                "roi": roi_box,
            }
        )
    return out


def simulate_clicks(
    s: dict,
    fix: Callable[[np.ndarray, list, list], np.ndarray],
    max_clicks: int,
    rule: str = "largest_region",
) -> tuple[list[float], list[float]]:
    """Dice after 0..max_clicks simulated clicks on one slice, and the seconds of each fix.

    ``fix(mask, positives, negatives) -> mask`` re-predicts the slice from all
    clicks so far; ``rule``: the click simulation
    (:func:`~napari_covid_seg.correction.clicks.next_click`).
    """
    from napari_covid_seg.correction.clicks import dice, next_click

    mask = s["auto"]
    pos: list[tuple[int, int]] = []
    neg: list[tuple[int, int]] = []
    curve, seconds = [dice(mask, s["truth"])], []
    # every click is run (no early stop): the curve is measured up to max_clicks
    for _ in range(max_clicks):
        c = next_click(mask, s["truth"], rule)
        if c is None:
            curve.append(1.0)
            continue
        (pos if c.positive else neg).append((c.row, c.col))
        t = time.perf_counter()
        mask = fix(mask, pos, neg)
        seconds.append(time.perf_counter() - t)
        curve.append(dice(mask, s["truth"]))
    return curve, seconds


def run_clicks(
    seg: Any, s: dict, max_clicks: int, rule: str = "largest_region"
) -> tuple[list[float], list[float]]:
    """:func:`simulate_clicks` with ``ClickSegmenter.fix_slice``; seconds as it timed itself."""
    seconds: list[float] = []

    def fix(mask: np.ndarray, pos: list, neg: list) -> np.ndarray:
        out = seg.fix_slice(
            s["image"],
            mask,
            pos,
            neg,
            spacing_yx_mm=s["spacing_yx"],
            intensity=s["intensity"],
            roi=s["roi"],
            thickness_mm=s["thickness"],
        )
        seconds.append(seg.timings["total"])
        return out

    curve, _ = simulate_clicks(s, fix, max_clicks, rule)
    return curve, seconds


def noc(curve: list[float], target: float, cap: int) -> int:
    """Clicks to reach ``target`` (0 if the automatic mask does), ``cap`` if never."""
    hit = [k for k, d in enumerate(curve) if d >= target]
    return hit[0] if hit else cap


def time_clicks(seg: Any, s: dict, threads: int, n: int = 12) -> float:
    """Median ms of ``fix_slice`` with ``threads`` torch threads (ROI cached)."""
    import torch

    from napari_covid_seg.correction.clicks import next_click

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        c = next_click(s["auto"], s["truth"])
        pts = [(c.row, c.col)] if c is not None else []
        kw = {
            "spacing_yx_mm": s["spacing_yx"],
            "intensity": s["intensity"],
            "roi": s["roi"],
            "thickness_mm": s["thickness"],
        }
        seg.fix_slice(s["image"], s["auto"], pts, [], **kw)  # warm-up, caches the ROI
        times = []
        for _ in range(n):
            seg.fix_slice(s["image"], s["auto"], pts, [], **kw)
            times.append(seg.timings["total"])
        return 1000.0 * statistics.median(times)
    finally:
        torch.set_num_threads(old)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_inference import machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--model", default="click")
    ap.add_argument("--default-model", default="default", help="automatic model to compare")
    ap.add_argument("--subset", choices=("val", "all"), default="val")
    ap.add_argument("--transpose", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--rotate-k", type=int, default=0)
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the click runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--start",
        choices=("model", "default"),
        default="model",
        help="the mask the clicks correct: the click model's own segment() mask, or the "
        "default model's (the workflow: segment with the default, fix with clicks)",
    )
    ap.add_argument(
        "--enforce",
        choices=("local", "global", "off"),
        default="global",
        help="make every click hold (ClickSegmenter.enforce): 'global' (the default), "
        "'local' (also: the model's changes only where they touch a click) or 'off' (the "
        "model's mask as is)",
    )
    ap.add_argument(
        "--click-rule",
        choices=("largest_region", "max_distance"),
        default="largest_region",
        help="click simulation: the interior point of the largest error region (the default, "
        "DIOS/DeepEdit, as in training) or RITM's farthest-from-border point of all errors",
    )
    args = ap.parse_args(argv)
    report = [k for k in REPORT if k <= args.max_clicks]

    import torch

    from napari_covid_seg.correction.clicks import ClickSegmenter, dice
    from napari_covid_seg.inference import load_predictor, segment
    from napari_covid_seg.models.checkpoint import load_model_version
    from napari_covid_seg.models.store import ModelStore

    if not Path(args.data).is_dir():
        print(json.dumps({"skipped": f"no data at {args.data}"}))
        sys.exit(0)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    store = ModelStore()
    mv = load_model_version(store.resolve(args.model), device="cpu")
    split = (mv.provenance or {}).get("split") or {}
    val_ids = [str(i).split("/", 1)[-1] for i in split.get("val_ids") or []] or None
    if args.subset == "val" and val_ids is None:
        raise SystemExit(f"model {mv.name!r} records no validation slices; use --subset all")
    predictor = load_predictor(mv, device="cpu")
    seg = ClickSegmenter(predictor)
    seg.enforce, seg.local = args.enforce != "off", args.enforce == "local"
    default = load_predictor(args.default_model, device="cpu") if args.default_model else None

    slices: list[dict] = []
    zero = {"slices": 0, "masks_identical": 0, "voxels_differing": 0}
    zero_dice: list[float] = []
    zero_seg_dice: list[float] = []
    default_dice: list[float] = []
    own_dice: list[float] = []
    opts = {"uncertainty": False, "device": "cpu"}
    with tempfile.TemporaryDirectory(prefix="bench-clicks-") as tmp:
        for case in load_cases(args, val_ids):
            case["volume"] = through_reader(case["volume"], Path(tmp), case["name"])
            res = segment(case["volume"], predictor, **opts)
            box = ((res.lung_report or {}).get("roi") or {}).get("box")
            raw = segment(case["volume"], predictor, restrict_to_lungs=False, **opts)
            base = segment(case["volume"], default, **opts) if default is not None else None
            these = slices_of(case, res.mask, box)
            raws = slices_of(case, raw.mask, box)
            bases = slices_of(case, base.mask, box) if base is not None else []
            for k, s in enumerate(these):
                nothing = seg.fix_slice(
                    s["image"],
                    None,
                    spacing_yx_mm=s["spacing_yx"],
                    intensity=s["intensity"],
                    roi=s["roi"],
                    thickness_mm=s["thickness"],
                )
                differ = int(np.count_nonzero(nothing != raws[k]["auto"]))
                zero["slices"] += 1
                zero["masks_identical"] += int(differ == 0)
                zero["voxels_differing"] += differ
                zero_dice.append(dice(nothing, s["truth"]))
                zero_seg_dice.append(dice(raws[k]["auto"], s["truth"]))
                own_dice.append(dice(s["auto"], s["truth"]))
                if bases:
                    default_dice.append(dice(bases[k]["auto"], s["truth"]))
                    if args.start == "default":
                        s["auto"] = bases[k]["auto"]
            slices += these
    if not slices:
        raise SystemExit("no labelled slices with lesion to click on")

    t0 = time.perf_counter()
    curves, per_click, per_slice = [], [], []
    for s in slices:
        curve, seconds = run_clicks(seg, s, args.max_clicks, args.click_rule)
        curves.append(curve)
        per_click += seconds
        brush = {str(k): brush_voxels(s["auto"], s["truth"], curve[k]) for k in report[1:]}
        brush["dice85"] = brush_voxels(s["auto"], s["truth"], 0.85)
        brush["dice90"] = brush_voxels(s["auto"], s["truth"], 0.90)
        per_slice.append(
            {
                "slice": s["name"],
                "lesion_voxels": int(s["truth"].sum()),
                "dice": [round(curve[k], 4) for k in report],
                "noc85": noc(curve, 0.85, args.max_clicks),
                "noc90": noc(curve, 0.90, args.max_clicks),
                "brush_voxels": brush,
            }
        )
    arr = np.asarray(curves)
    cap = args.max_clicks
    nocs85 = [p["noc85"] for p in per_slice]
    nocs90 = [p["noc90"] for p in per_slice]

    def mean_brush(key: str) -> float:
        return round(float(np.mean([p["brush_voxels"][key] for p in per_slice])), 1)

    lesion = float(np.mean([p["lesion_voxels"] for p in per_slice]))
    timing_slice = max(slices, key=lambda s: s["image"].size)
    ms = {
        f"{n}_thread{'s' if n > 1 else ''}": round(time_clicks(seg, timing_slice, n), 1)
        for n in (1, 2)
    }
    out = {
        "model": mv.name,
        "model_version": mv.version,
        "data": os.fspath(args.data),
        "subset": args.subset,
        "n_slices": len(slices),
        "max_clicks": cap,
        "start": f"segment() mask (defaults) of the {args.start} model",
        "enforce": args.enforce,
        "click_rule": args.click_rule,
        "protocol": "start = segment() mask (defaults); click = "
        + (
            "interior of the largest error region"
            if args.click_rule == "largest_region"
            else "farthest-from-border point of all errors (RITM)"
        )
        + " (positive: missed lesion, negative: false positive); fix_slice with the "
        "current mask and all clicks; native-resolution Dice per slice, averaged",
        "dice_at_clicks": {str(k): round(float(arr[:, k].mean()), 4) for k in report},
        "dice_curve": [round(float(v), 4) for v in arr.mean(axis=0)],
        "noc85": round(float(np.mean(nocs85)), 2),
        "noc90": round(float(np.mean(nocs90)), 2),
        "reached85": round(
            float(np.mean([n < cap or arr[i, cap] >= 0.85 for i, n in enumerate(nocs85)])), 2
        ),
        "reached90": round(
            float(np.mean([n < cap or arr[i, cap] >= 0.90 for i, n in enumerate(nocs90)])), 2
        ),
        "ms_per_click": ms,
        "ms_per_click_benchmark_runs": round(1000.0 * statistics.median(per_click), 1)
        if per_click
        else None,
        "brush_voxels": {
            **{f"same_dice_as_{k}_clicks": mean_brush(str(k)) for k in report[1:]},
            "to_dice85": mean_brush("dice85"),
            "to_dice90": mean_brush("dice90"),
            "mean_lesion_voxels": round(lesion, 1),
        },
        "zero_click": {
            **zero,
            "dice_fix_slice_no_clicks": round(float(np.mean(zero_dice)), 4),
            "dice_segment_no_lung_restrict": round(float(np.mean(zero_seg_dice)), 4),
            "dice_segment_defaults": round(float(np.mean(own_dice)), 4),
        },
        "default_model_dice": round(float(np.mean(default_dice)), 4) if default_dice else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "seed": args.seed,
        "torch_threads": args.threads,
        "machine": machine(),  # bench_inference.machine: one description of the machine
        "per_slice": per_slice,
    }
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
