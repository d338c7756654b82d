"""Click to fix, inference-side ablation: what happens around the click model, measured in clicks.

The protocol of ``bench_clicks.py --start default`` (the default model's
``segment()`` mask, clicks at the interior point of the largest error region,
native-resolution Dice per slice averaged over the validation slices), with
the bundled click model unchanged; only what is done around it varies:

* ``baseline``: ``ClickSegmenter.fix_slice`` as shipped (model, threshold 0.5,
  every click enforced by ``enforce_clicks``);
* thresholds: ``cut_global`` (per slice, the cut on a 0.05 grid closest to 0.5
  that makes every positive click lesion and every negative one background),
  ``hysteresis_pos`` (a positive click also adds the connected region of
  p > 0.2 around it, within 10 mm);
* region semantics: ``neg_component`` (a negative click removes the whole
  connected component of the mask it fell on, if within 20 mm of the click and
  free of positive clicks);
* test-time tricks: ``second_pass`` (the click model again, its own mask as the
  mask channel), ``flip_tta`` (mean logit with the left-right mirror),
  ``zoom_crop`` (RITM-style zoom-in: the model on a square of half the lung
  ROI's side around the newest click, the mask kept outside it),
  ``radius_x1.5`` / ``radius_x0.7`` (click disks drawn larger / smaller than
  trained), ``ensemble_default`` (0.7 click model + 0.3 default model
  probability), ``mask_start`` (the mask channel is always the automatic mask,
  not the current one), ``window_newest`` (changes kept only within 12 click
  radii of the newest click);
* ceilings (no model, the truth known): ``oracle_Dr``: each click sets its
  error region to the truth within D click radii of the click and nothing else
  (D = 1 is a perfect brush of the click's own disk).

Prints one JSON object: per variant, Dice after 0/1/3/5/10/20 clicks, NoC@85/90
and the median ms of one correction (1 torch thread).

Usage::

    python benchmarks/ablate_clicks.py [--only baseline,flip_tta] [--max-clicks 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_clicks as bc

REPORT = (0, 1, 3, 5, 10, 20)
EIGHT = np.ones((3, 3), bool)
Fix = Callable[[dict, np.ndarray, list, list, dict], np.ndarray]


def load_slices(seg: Any) -> list[dict]:
    """The benchmark's validation slices, start = the default model's mask and probability."""
    from napari_covid_seg.inference import load_predictor, segment
    from napari_covid_seg.inference.preprocess import slice_reorientation
    from napari_covid_seg.io.orientation import to_canonical
    from napari_covid_seg.models.checkpoint import load_model_version
    from napari_covid_seg.models.store import ModelStore

    mv = load_model_version(ModelStore().resolve("click"), device="cpu")
    val_ids = [str(i).split("/", 1)[-1] for i in mv.provenance["split"]["val_ids"]]
    args = argparse.Namespace(data=str(bc.DATA), subset="val", transpose=True, rotate_k=0)
    default = load_predictor("default", device="cpu")
    opts = {"uncertainty": False, "device": "cpu"}
    out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ablate-clicks-") as tmp:
        for case in bc.load_cases(args, val_ids):
            case["volume"] = bc.through_reader(case["volume"], Path(tmp), case["name"])
            own = segment(case["volume"], seg.predictor, **opts)
            box = ((own.lung_report or {}).get("roi") or {}).get("box")
            base = segment(case["volume"], default, **opts)
            prob = to_canonical(np.asarray(base.probability), slice_reorientation(case["volume"]))
            scale = 255.0 if prob.dtype == np.uint8 else 1.0
            for z, s in enumerate(bc.slices_of(case, base.mask, box)):
                s["p_default"] = prob[z].astype(np.float32) / scale
                out.append(s)
    return out


def variants(seg: Any) -> dict[str, Fix]:
    """Name -> ``fix(slice, mask, positives, negatives, state) -> bool (H, W)``."""
    from napari_covid_seg.correction.clicks import _inside, disk_map, enforce_clicks

    def kw(s: dict, roi: Any = None) -> dict:
        return {
            "spacing_yx_mm": s["spacing_yx"],
            "intensity": s["intensity"],
            "roi": s["roi"] if roi is None else roi,
            "thickness_mm": s["thickness"],
        }

    def radius(s: dict) -> float:
        return seg._click_radius(seg.context(s["image"], **kw(s)), *s["image"].shape)

    def prob(s: dict, mask: Any, pos: list, neg: list, roi: Any = None) -> np.ndarray:
        logits = seg.predict(s["image"], mask, pos, neg, **kw(s, roi))
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -30.0, 30.0)))

    def newest(state: dict, pos: list, neg: list) -> list:
        seen = state.setdefault("seen", set())
        new = [q for q in [*pos, *neg] if q not in seen]
        seen.update([*pos, *neg])
        return new

    def enforced(s: dict, p: np.ndarray, mask: np.ndarray, pos: list, neg: list, **k: Any):
        return enforce_clicks(p, mask, pos, neg, radius=radius(s), **k)

    def baseline(s, mask, pos, neg, state):
        return seg.fix_slice(s["image"], mask, pos, neg, **kw(s))

    def cut_global(s, mask, pos, neg, state):
        p = prob(s, mask, pos, neg)
        h, w = p.shape
        ok = [
            g
            for g in np.round(np.arange(0.05, 0.96, 0.05), 2)
            if all(p[_inside(q, h, w)] > g for q in pos)
            and all(p[_inside(q, h, w)] <= g for q in neg)
        ]
        cut = min(ok, key=lambda g: abs(g - 0.5)) if ok else 0.5
        return enforced(s, p, mask, pos, neg, threshold=float(cut))

    def hysteresis_pos(s, mask, pos, neg, state):
        p = prob(s, mask, pos, neg)
        out = enforced(s, p, mask, pos, neg)
        reach = 10.0 / float(np.mean(s["spacing_yx"]))
        yy, xx = np.ogrid[: p.shape[0], : p.shape[1]]
        for q in pos:
            r, c = _inside(q, *p.shape)
            near = (yy - r) ** 2 + (xx - c) ** 2 <= reach**2
            lab, _ = ndimage.label((p > 0.2) & near, EIGHT)
            if lab[r, c]:
                out |= lab == lab[r, c]
        return out

    def neg_component(s, mask, pos, neg, state):
        p = prob(s, mask, pos, neg)
        out = enforced(s, p, mask, pos, neg)
        reach = 20.0 / float(np.mean(s["spacing_yx"]))
        pos_disks = disk_map(p.shape, pos, radius(s)) > 0
        lab, _ = ndimage.label(mask, EIGHT)
        for q in neg:
            r, c = _inside(q, *p.shape)
            comp = lab == lab[r, c] if lab[r, c] else None
            if comp is None or (comp & pos_disks).any():
                continue
            ys, xs = np.nonzero(comp)
            if ((ys - r) ** 2 + (xs - c) ** 2).max() <= reach**2:
                out &= ~comp
        return out

    def second_pass(s, mask, pos, neg, state):
        first = prob(s, mask, pos, neg) > 0.5
        return enforced(s, prob(s, first, pos, neg), mask, pos, neg)

    def flip_tta(s, mask, pos, neg, state):
        seg.predictor.tta = True
        try:
            return seg.fix_slice(s["image"], mask, pos, neg, **kw(s))
        finally:
            seg.predictor.tta = False

    def zoom_crop(s, mask, pos, neg, state):
        q = newest(state, pos, neg)
        if not q:
            return baseline(s, mask, pos, neg, state)
        side = int(0.5 * (s["roi"][1] - s["roi"][0]))
        y0, x0 = int(q[-1][0]) - side // 2, int(q[-1][1]) - side // 2
        p = prob(s, mask, pos, neg, roi=[y0, y0 + side, x0, x0 + side])
        inside = np.zeros(p.shape, bool)
        inside[max(0, y0) : y0 + side, max(0, x0) : x0 + side] = True
        p = np.where(inside, p, mask.astype(np.float32))
        return enforced(s, p, mask, pos, neg)

    def radius_x(k: float) -> Fix:
        def fix(s, mask, pos, neg, state):
            old = seg.radius_px
            seg.radius_px = old * k
            try:
                p = prob(s, mask, pos, neg)
            finally:
                seg.radius_px = old
            return enforced(s, p, mask, pos, neg)

        return fix

    def ensemble_default(s, mask, pos, neg, state):
        p = 0.7 * prob(s, mask, pos, neg) + 0.3 * s["p_default"]
        return enforced(s, p, mask, pos, neg)

    def mask_start(s, mask, pos, neg, state):
        return enforced(s, prob(s, s["auto"], pos, neg), mask, pos, neg)

    def window_newest(s, mask, pos, neg, state):
        out = baseline(s, mask, pos, neg, state)
        near = disk_map(mask.shape, newest(state, pos, neg), 12.0 * radius(s)) > 0
        return np.where(near, out, mask)

    def oracle(d: float) -> Fix:
        from napari_covid_seg.correction.clicks import interior_point, largest_error_region

        def fix(s, mask, pos, neg, state):
            region, _ = largest_error_region(mask, s["truth"])
            r, c = interior_point(region)  # the click just made
            near = disk_map(mask.shape, [(r, c)], d * radius(s)) > 0
            return np.where(near & region, s["truth"], mask)

        return fix

    return {
        "baseline": baseline,
        "cut_global": cut_global,
        "hysteresis_pos": hysteresis_pos,
        "neg_component": neg_component,
        "second_pass": second_pass,
        "flip_tta": flip_tta,
        "zoom_crop": zoom_crop,
        "radius_x1.5": radius_x(1.5),
        "radius_x0.7": radius_x(0.7),
        "ensemble_default": ensemble_default,
        "mask_start": mask_start,
        "window_newest": window_newest,
        "oracle_1r": oracle(1.0),
        "oracle_2r": oracle(2.0),
        "oracle_4r": oracle(4.0),
        "oracle_whole_region": oracle(1e6),
    }


def run(fix: Fix, slices: list[dict], max_clicks: int, rule: str) -> dict[str, Any]:
    """Dice curve, NoC@85/90 and median ms of ``fix`` over the slices (bench_clicks' protocol)."""
    curves, seconds = [], []
    for s in slices:
        state: dict = {}
        curve, secs = bc.simulate_clicks(
            s,
            lambda mask, pos, neg, s=s, state=state: fix(s, mask, pos, neg, state),
            max_clicks,
            rule,
        )
        curves.append(curve)
        seconds.extend(secs)
    arr = np.asarray(curves)

    def noc(target: float) -> float:
        return round(float(np.mean([bc.noc(c, target, max_clicks) for c in curves])), 2)

    return {
        "dice": {str(k): round(float(arr[:, k].mean()), 4) for k in REPORT if k <= max_clicks},
        "noc85": noc(0.85),
        "noc90": noc(0.90),
        "ms": round(1000.0 * statistics.median(seconds), 1) if seconds else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--click-rule", choices=("largest_region", "max_distance"), default=None)
    args = ap.parse_args(argv)

    import torch

    from napari_covid_seg.correction.clicks import ClickSegmenter

    if not bc.DATA.is_dir():
        print(json.dumps({"skipped": f"no data at {bc.DATA}"}))
        sys.exit(0)
    torch.set_num_threads(1)
    seg = ClickSegmenter("click")
    slices = load_slices(seg)
    table = variants(seg)
    names = [n for n in args.only.split(",") if n] or list(table)
    rules = [args.click_rule] if args.click_rule else ["largest_region"]
    out: dict[str, Any] = {"n_slices": len(slices), "start": "default model", "rows": {}}
    for rule in rules:
        for name in names:
            row = run(table[name], slices, args.max_clicks, rule)
            key = name if rule == "largest_region" else f"{name} ({rule})"
            out["rows"][key] = row
            print(json.dumps({key: row}), file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
