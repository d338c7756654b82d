"""Correction tools on a CT-sized mask: seconds per operation vs. a plain scipy baseline.

Prints JSON: one record per operation with ``seconds``, ``baseline_seconds``
(the straightforward whole-volume scipy call) and ``speedup``.

The ``live_*`` records time the Correct widget's live numbers (lesion mL, count,
% of each lung, GGO/consolidation) after one brush stroke: the stroke's diff,
its undo record and :class:`~napari_covid_seg.correction.LiveBurden`'s update
(median of several strokes; target under 0.2 s on 300x512x512), against
recomputing :func:`~napari_covid_seg.inference.quantify.quantify` from scratch.
Usage: python benchmarks/bench_correction.py [--slices 300] [--only live]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
from scipy import ndimage

from napari_covid_seg.correction import (
    EditHistory,
    LiveBurden,
    diff,
    fingerprint,
    grow,
    list_lesions,
    remove_small_islands,
    shrink,
    smooth,
)


def _mask(n_slices: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    vol = np.zeros((n_slices, 512, 512), np.uint8)
    zz, yy, xx = np.ogrid[:n_slices, :512, :512]
    for _ in range(40):
        c = rng.uniform([0.15 * n_slices, 120, 80], [0.85 * n_slices, 400, 430])
        r = rng.uniform([4, 10, 10], [20, 45, 45])
        d2 = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2
        vol[d2 <= 1] = 1
    return vol


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--only", choices=("all", "live"), default="all")
    args = ap.parse_args()
    vol = _mask(args.slices)
    if args.only == "live":
        print(json.dumps(_live_records(vol), indent=1))
        return
    spacing = (1.0, 0.7, 0.7)
    sampling = np.asarray(spacing)

    def base_grow():
        return ndimage.distance_transform_edt(vol == 0, sampling=sampling) <= 2.0

    def base_shrink():
        return ndimage.distance_transform_edt(vol != 0, sampling=sampling) > 2.0

    def base_islands():
        lab, _ = ndimage.label(vol)
        return np.bincount(lab.ravel())

    edited = vol.copy()
    edited[150, 200:260, 200:260] = 1
    records = []
    ops = {
        "grow_2mm": (lambda: grow(vol, 2.0, spacing), base_grow),
        "shrink_2mm": (lambda: shrink(vol, 2.0, spacing), base_shrink),
        "median_1.5mm": (
            lambda: smooth(vol, 1.5, spacing),
            lambda: ndimage.median_filter(vol, size=(3, 5, 5)),
        ),
        "remove_islands": (lambda: remove_small_islands(vol, 20.0, spacing), base_islands),
        "list_lesions": (lambda: list_lesions(vol, spacing), base_islands),
        "history_record": (
            lambda: EditHistory().record(vol, edited),
            lambda: vol.copy(),  # baseline: undo by keeping a full copy
        ),
        "fingerprint": (
            lambda: fingerprint(vol.astype(np.int16), np.eye(4)),
            lambda: vol.astype(np.int16).tobytes(),
        ),
    }
    for name, (fn, base) in ops.items():
        s, b = _time(fn), _time(base)
        records.append(
            {
                "operation": name,
                "shape": list(vol.shape),
                "seconds": round(s, 4),
                "baseline_seconds": round(b, 4),
                "speedup": round(b / s, 2) if s > 0 else None,
                "machine": platform.processor() or platform.machine(),
            }
        )
    records += _live_records(vol)
    print(json.dumps(records, indent=1))


def _stroke(shape: tuple[int, ...], z: int, y: int, x0: int, radius: int = 10) -> tuple:
    """Box and disk-swept footprint of a horizontal brush stroke on axial slice ``z``."""
    y0, y1 = max(0, y - radius), min(shape[1], y + radius + 1)
    x1 = min(shape[2], x0 + 80)
    yy, xx = np.ogrid[y0:y1, x0 - radius : x1 + radius]
    near = (np.abs(yy - y) <= radius) & (xx >= x0 - radius) & (xx <= x1 + radius)
    box = (slice(z, z + 1), slice(y0, y1), slice(x0 - radius, x1 + radius))
    return box, near[None]


def _live_records(vol: np.ndarray) -> list[dict]:
    """Live quantification after one brush stroke vs. recomputing it (see the docstring)."""
    from napari_covid_seg.inference.quantify import quantify

    rng = np.random.default_rng(1)
    mask = vol.copy()
    _, h, w = mask.shape
    yy, xx = np.ogrid[:h, :w]
    lungs = np.zeros(mask.shape, np.uint8)
    lungs[:, ((yy - 256) / 200) ** 2 + ((xx - 150) / 110) ** 2 <= 1] = 1
    lungs[:, ((yy - 256) / 200) ** 2 + ((xx - 362) / 110) ** 2 <= 1] = 2
    image = rng.integers(-1000, 100, size=mask.shape, dtype=np.int16)
    voxel_ml = 0.7 * 0.7 * 1.0 / 1000
    t0 = time.perf_counter()
    burden = LiveBurden(mask, voxel_ml, lungs=lungs, image=image, dense_from=-300.0)
    setup = time.perf_counter() - t0
    history = EditHistory()
    times: dict[str, list[float]] = {"paint": [], "erase": []}
    lesion_voxels = np.flatnonzero(mask)
    for i in range(16):
        value = 1 if i % 2 == 0 else 0
        # Every stroke starts on a lesion: paint extends one, erase cuts across one.
        z, y, x = np.unravel_index(int(rng.choice(lesion_voxels)), mask.shape)
        box, near = _stroke(mask.shape, int(z), int(y), max(10, min(int(x) - 40, w - 100)))
        shadow = mask[box].copy()  # the session's shadow of the stroke's box
        mask[box][near] = value  # napari paints the stroke
        t0 = time.perf_counter()
        flat = diff(shadow, mask[box])  # what EditSession does after the stroke
        coords = np.unravel_index(flat, shadow.shape)
        full = np.ravel_multi_index(
            tuple(c + s.start for c, s in zip(coords, box, strict=True)), mask.shape
        )
        before, after = shadow.reshape(-1)[flat], mask[box].reshape(-1)[flat]
        history.record_change(full, before, after, shape=mask.shape)
        burden.lesions_changed(full, before, after)
        burden.quantification()
        times["paint" if value else "erase"].append(time.perf_counter() - t0)
    # Worst case for a stroke: erasing a lesion's whole cross-section splits it in two,
    # so the counter labels that lesion's box again.
    times["split"] = []
    for _ in range(3):
        z0 = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
        box = (slice(z0, z0 + 1), slice(0, h), slice(0, w))
        shadow = mask[box].copy()
        mask[box] = 0
        t0 = time.perf_counter()
        flat = diff(shadow, mask[box])
        full = np.ravel_multi_index(
            tuple(
                c + s.start for c, s in zip(np.unravel_index(flat, shadow.shape), box, strict=True)
            ),
            mask.shape,
        )
        before, after = shadow.reshape(-1)[flat], mask[box].reshape(-1)[flat]
        history.record_change(full, before, after, shape=mask.shape)
        burden.lesions_changed(full, before, after)
        burden.quantification()
        times["split"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    reference = quantify(mask, voxel_ml, lungs, image=image, dense_from=-300.0)
    baseline = time.perf_counter() - t0
    assert reference == burden.quantification(), "live numbers differ from a recomputation"
    machine = platform.processor() or platform.machine()
    records = [
        {
            "operation": "live_setup",
            "shape": list(mask.shape),
            "seconds": round(setup, 4),
            "baseline_seconds": round(baseline, 4),
            "speedup": None,
            "machine": machine,
        }
    ]
    for kind, values in times.items():
        median = float(np.median(values))
        records.append(
            {
                "operation": f"live_after_{kind}_stroke",
                "strokes": len(values),
                "shape": list(mask.shape),
                "seconds": round(median, 4),
                "max_seconds": round(max(values), 4),
                "baseline_seconds": round(baseline, 4),
                "speedup": round(baseline / median, 1) if median > 0 else None,
                "target_seconds": 0.2,
                "machine": machine,
            }
        )
    return records


if __name__ == "__main__":
    main()
