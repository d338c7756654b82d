"""Segment the real full-field chest CT of ../shared/data with defaults; draw an overlay.

    python scripts/figure_real_ct.py [--model default] [--out docs/images/real_chest_ct.png]

Runs exactly what ``napari-covid-seg segment`` runs (reader -> engine with
default settings) on ``chest-ct/lung_dx_a0002_chest.nii.gz`` (Lung-PET-CT-Dx
A0002: a lung-cancer patient, no COVID-19) and on the abdominal
``ct-example/example_ct.nii.gz`` (lung bases only), then prints one JSON
object (lung volumes, lesion mL per lung, lung-mask status, timings) and
saves a picture of eight axial slices: lungs outlined (right cyan, left
green), predicted lesion in red.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CASES = {
    "chest_ct_A0002": DATA / "chest-ct" / "lung_dx_a0002_chest.nii.gz",
    "abdomen_example": DATA / "ct-example" / "example_ct.nii.gz",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "real_chest_ct.png"))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    from napari_covid_seg.inference import load_predictor, segment
    from napari_covid_seg.io import read_volume
    from napari_covid_seg.io.orientation import to_canonical

    predictor = load_predictor(args.model, device=args.device)
    report: dict = {"model": predictor.name, "cases": {}}
    panels = []
    for name, path in CASES.items():
        if not path.exists():
            report["cases"][name] = f"missing: {path}"
            continue
        vol = read_volume(path)
        res = segment(vol, predictor)
        q = res.quantify()
        r = vol.reorientation
        img = to_canonical(vol.data, r)
        lungs = to_canonical(res.lungs, r)
        mask = to_canonical(res.mask, r)
        comps, n = ndimage.label(mask)
        sizes = np.bincount(comps.ravel())[1:] * vol.voxel_volume_ml if n else np.zeros(0)
        report["cases"][name] = {
            "shape": list(vol.data.shape),
            "spacing_mm": [round(s, 3) for s in vol.spacing],
            "lung_report": res.lung_report,
            "lesion_ml": round(q.lesion_ml, 2),
            "right_lesion_ml": round(q.right_lesion_ml, 2) if q.percent_lungs is not None else None,
            "left_lesion_ml": round(q.left_lesion_ml, 2) if q.percent_lungs is not None else None,
            "n_lesions": q.n_lesions,
            "largest_lesions_ml": [round(float(s), 2) for s in sorted(sizes)[::-1][:5]],
            "seconds": {k: round(v, 2) for k, v in res.timings.items()},
        }
        if name == "chest_ct_A0002":
            zs = np.flatnonzero(lungs.any(axis=(1, 2)))
            for z in np.linspace(zs[0], zs[-1], 8).astype(int)[::-1]:
                panels.append((img[z], lungs[z], mask[z], f"slice {z}"))
    if panels:
        fig, axes = plt.subplots(2, 4, figsize=(16, 8.4))
        for ax, (im, lu, ma, title) in zip(axes.ravel(), panels, strict=False):
            ax.imshow(np.clip((im + 1350) / 1500, 0, 1), cmap="gray", interpolation="nearest")
            for label, color in ((1, "cyan"), (2, "lime")):
                if (lu == label).any():
                    ax.contour(lu == label, levels=[0.5], colors=color, linewidths=0.8)
            if ma.any():
                overlay = np.zeros((*ma.shape, 4))
                overlay[ma > 0] = (1, 0, 0, 0.55)
                ax.imshow(overlay, interpolation="nearest")
            ax.set_title(title, fontsize=10)
            ax.axis("off")
        fig.suptitle(
            "Real full-field chest CT (Lung-PET-CT-Dx A0002, lung cancer, no COVID-19), "
            "`segment` defaults: lungs (cyan right, green left), predicted lesion (red)",
            fontsize=11,
        )
        fig.tight_layout()
        fig.savefig(args.out, dpi=80)
        report["figure"] = str(args.out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
