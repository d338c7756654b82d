"""Correction tools on a CT-sized mask: seconds per operation vs. a plain scipy baseline.

Prints JSON: one record per operation with ``seconds``, ``baseline_seconds``
(the straightforward whole-volume scipy call) and ``speedup``.
Usage: python benchmarks/bench_correction.py [--slices 300]
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
    args = ap.parse_args()
    vol = _mask(args.slices)
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
    print(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
