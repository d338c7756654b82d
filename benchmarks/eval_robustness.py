"""Accuracy on the CT a user has: labelled slices as HU NIfTI, through `segment`.

Every labelled validation slice (the model's own validation split, from its
provenance) is written as a one-slice HU NIfTI file with its true anatomy,
in each acquisition variant of :mod:`napari_covid_seg.training.acquisition`
(tight crop, full field of view with body, table and air, a sharper kernel
with noise, thick-slice blur, full field + sharp), then read back and
segmented exactly as ``napari-covid-seg segment`` does, with default settings
and with ``--no-lung-restrict``. Prints one JSON object: per variant, the
per-slice mean Dice (``dice_mean``), pooled Dice, and how often the lung
restriction was skipped.

    python benchmarks/eval_robustness.py --model default \\
        --data ../shared/data/covid-semiseg/train [--tta] [--out docs/robustness.json]

The data default is the shared COVID-SemiSeg folder; without it the script
exits with a message (it is not part of the test suite).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "covid-semiseg" / "train"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--subset", choices=("val", "all"), default="val")
    ap.add_argument("--variants", default=None, help="comma-separated subset of the variants")
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if not Path(args.data, "images").is_dir():
        print(f"no labelled slices at {args.data} (images/ + masks/)", file=sys.stderr)
        return 1

    from napari_covid_seg.inference import load_predictor
    from napari_covid_seg.models.checkpoint import load_model_version
    from napari_covid_seg.models.store import ModelStore
    from napari_covid_seg.training.acquisition import VARIANTS, slice_volume, windowed_to_hu
    from napari_covid_seg.training.evaluate import evaluate_cases, load_labelled_slices

    mv = load_model_version(ModelStore().resolve(args.model), device="cpu")
    ids = None
    if args.subset == "val":
        split = (mv.provenance or {}).get("split") or {}
        ids = [str(i).split("/", 1)[-1] for i in split.get("val_ids") or []]
        if not ids:
            print(f"model {args.model!r} records no validation split", file=sys.stderr)
            return 1
    slices = load_labelled_slices(args.data, transpose=True, ids=ids)
    predictor = load_predictor(mv, device=args.device, tta=args.tta)
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    out: dict = {
        "model": mv.name,
        "model_version": mv.version,
        "preprocessing_roi": mv.preprocessing.get("roi"),
        "n_slices": len(slices),
        "tta": True if args.tta else "auto (the segment default: on for noisy scans)",
        "path": "one-slice HU NIfTI, true affine -> reader -> segment (defaults)",
        "variants": {},
    }
    with tempfile.TemporaryDirectory(prefix="covid-seg-robust-") as tmp:
        for name in names:
            rng = np.random.default_rng(args.seed)
            cases = []
            for sid, img, msk in slices:
                hu, m = VARIANTS[name](windowed_to_hu(img), msk, rng)
                cases.append((f"{name}_{sid}", slice_volume(hu), m[None]))
            row = {}
            for label, restrict in (("defaults", True), ("no_lung_restrict", False)):
                t0 = time.perf_counter()
                r = evaluate_cases(
                    predictor, cases, workdir=tmp, restrict_to_lungs=restrict, uncertainty=False
                )
                row[label] = {
                    "dice_mean": round(r["dice_mean"], 4),
                    "dice_pooled": round(r["dice"], 4),
                    "precision": round(r["precision"], 4),
                    "sensitivity": round(r["sensitivity"], 4),
                    "restriction_skipped": r["restriction_skipped"],
                    "tta_on": r["tta_on"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            row["defaults_minus_no_restrict"] = round(
                row["defaults"]["dice_mean"] - row["no_lung_restrict"]["dice_mean"], 4
            )
            out["variants"][name] = row
            print(f"{name}: {row}", file=sys.stderr)
    tight = out["variants"].get("tight_crop", {}).get("defaults", {}).get("dice_mean")
    if tight is not None:
        for row in out["variants"].values():
            row["defaults_minus_tight_crop"] = round(row["defaults"]["dice_mean"] - tight, 4)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
