"""Lung mask speed on a 300 x 512 x 512 chest CT (target: under a second on 2 CPU cores).

Prints one JSON object: seconds for the product's lung mask
(:func:`napari_covid_seg.inference.lungs.lung_mask_canonical`) and, as the
simple baseline measured in the same run, a plain threshold + largest-two 3D
components at full resolution, with their ratio. The volume is the real
full-field chest CT of ../shared/data tiled along z to 300 slices where it is
present, else the synthetic phantom at 300 x 512 x 512.

    python benchmarks/bench_lungs.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest-ct"


def _volume() -> tuple[np.ndarray, tuple[float, float, float], str]:
    from napari_covid_seg.io import read_volume
    from napari_covid_seg.io.orientation import to_canonical

    path = REAL / "lung_dx_a0002_chest.nii.gz"
    if path.exists():
        vol = read_volume(path)
        canon = np.ascontiguousarray(to_canonical(vol.data, vol.reorientation))
        reps = -(-300 // canon.shape[0])
        data = np.concatenate([canon] * reps)[:300]
        return data, (0.8, vol.spacing[1], vol.spacing[2]), "real chest CT tiled to 300 slices"
    from napari_covid_seg.io.phantom import make_phantom

    img, _ = make_phantom(shape=(300, 512, 512), spacing=(1.0, 0.7, 0.7))
    return img.data, (1.0, 0.7, 0.7), "phantom"


def _baseline(canon: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    lab, n = ndimage.label(canon < -320)
    if n == 0:
        return np.zeros(canon.shape, np.uint8)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = np.argsort(sizes)[::-1][:2]
    return np.isin(lab, keep).astype(np.uint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from napari_covid_seg.inference.lungs import lung_mask_canonical

    canon, spacing, source = _volume()
    lung_mask_canonical(canon[:8], spacing=spacing)  # warm imports
    times, base = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        lung_mask_canonical(canon, spacing=spacing)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _baseline(canon)
        base.append(time.perf_counter() - t0)
    out = {
        "benchmark": "lung mask, 300 x 512 x 512 int16 HU",
        "volume": source,
        "shape": list(canon.shape),
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "lung_mask_s": round(min(times), 3),
        "lung_mask_s_all": [round(t, 3) for t in times],
        "baseline_threshold_components_s": round(min(base), 3),
        "ratio_vs_baseline": round(min(times) / min(base), 2),
        "target_s": 1.0,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
