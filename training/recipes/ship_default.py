"""Ship the best default run as the bundled fp16 model, measured on the path a user runs.

Usage (from the repository root, after
``napari-covid-seg train --config training/configs/default.yaml --out RUN``)::

    python training/recipes/ship_default.py RUN src/napari_covid_seg/bundled_models/default

Every figure it stores and prints comes from :func:`training.evaluate.evaluate_model`:
the run's 10 validation slices written as one-slice HU NIfTI files with
their true anatomy, read back and segmented like ``napari-covid-seg
segment`` (defaults; also ``--no-lung-restrict`` and ``--tta``), scored at
native size. Data paths in the provenance are relative to the named root
``shared`` (the project's data folder), never absolute.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "covid-semiseg" / "train"
DATA_REF = {"root": "shared", "path": "data/covid-semiseg/train"}
NAMES = ("dice", "iou", "precision", "sensitivity", "specificity", "accuracy")
DESCRIPTION = (
    "ResAttUnet (ResNet34 encoder + attention gates) trained from scratch on 40 of the 50 "
    "COVID-SemiSeg/MedSeg CT slices (10 for validation), lung-ROI preprocessing. "
    "Research use only; see docs/model_card.md."
)
LICENSE = (
    "Weights: research and non-commercial use only (trained on the MedSeg COVID-19 CT "
    "segmentation dataset as repackaged as COVID-SemiSeg); cite MedSeg and Inf-Net "
    "(Fan et al., IEEE TMI 2020). Code: BSD-3-Clause."
)


def _short(m: dict) -> dict:
    out = {k: round(m[k], 4) for k in NAMES}
    out.update(dice_mean=round(m["dice_mean"], 4), iou_mean=round(m["iou_mean"], 4))
    out["restriction_skipped"] = m.get("restriction_skipped", 0)
    return out


def _relative_data(prov: dict) -> dict:
    """Provenance with data paths replaced by a named root + relative path."""
    prov = dict(prov)
    prov["data"] = [
        {**{k: v for k, v in d.items() if k != "path"}, "path": DATA_REF}
        for d in prov.get("data", [])
    ]
    cfg = dict(prov.get("config", {}))
    if "data" in cfg:
        cfg["data"] = [f"{DATA_REF['root']}/{DATA_REF['path']}"]
    prov["config"] = cfg
    prov.pop("parent_path", None)
    return prov


def measure(dest: Path) -> dict:
    """The user-path figures of model version ``dest`` on its validation slices.

    Three runs: ``defaults``, ``no_lung_restrict`` and ``tta`` (as ``segment``,
    ``--no-lung-restrict``, ``--tta``), each with its seconds.
    """
    from napari_covid_seg.training.evaluate import evaluate_model

    runs = {}
    for label, kw in (
        ("defaults", {}),
        ("no_lung_restrict", {"restrict_to_lungs": False}),
        ("tta", {"tta": True}),
    ):
        t0 = time.perf_counter()
        r = evaluate_model(dest, [DATA], transpose=True, subset="val", device="cpu", **kw)
        runs[label] = {**_short(r), "seconds": round(time.perf_counter() - t0, 1)}
    return runs


def val_metrics(runs: dict) -> dict:
    """The ``model.json`` metrics (``val_*``) from :func:`measure`'s runs."""
    metrics = {f"val_{k}": runs["defaults"][k] for k in NAMES}
    metrics["val_dice_mean"] = runs["defaults"]["dice_mean"]
    metrics["val_dice_mean_no_lung_restrict"] = runs["no_lung_restrict"]["dice_mean"]
    metrics["val_dice_mean_tta"] = runs["tta"]["dice_mean"]
    return metrics


def main(run: Path, dest: Path) -> dict:
    import torch

    from napari_covid_seg.models.checkpoint import load_model_version, save_model_version

    torch.set_num_threads(2)
    result = json.loads((run / "result.json").read_text())
    mv = load_model_version(run / "best")
    prov = _relative_data(mv.provenance)
    prov.update(
        {
            "epochs_run": result["epochs_run"],
            "stopped": result["stopped"],
            "training_seconds": result["seconds"],
            "machine": "shared 2-core x86-64 CPU with avx512_bf16, no GPU; 2 torch threads",
            "data_origin": "MedSeg COVID-19 CT segmentation dataset as repackaged as "
            "COVID-SemiSeg (Inf-Net, Fan et al. 2020), training split, 50 slices",
            "weights_note": "trained in fp32 with bf16 autocast; shipped as fp16",
        }
    )
    save_model_version(
        dest,
        mv.model,
        preprocessing=mv.preprocessing,
        provenance=prov,
        metrics={"best_epoch": result["best_epoch"], "val_slices": len(prov["split"]["val_ids"])},
        name="default",
        description=DESCRIPTION,
        license=LICENSE,
        dtype="float16",
        overwrite=True,
    )
    runs = measure(dest)
    metrics: dict = {
        "path": "one-slice HU NIfTI, true affine -> reader -> segment; native size",
        "best_epoch": result["best_epoch"],
        "val_slices": len(prov["split"]["val_ids"]),
        **val_metrics(runs),
    }
    shipped = load_model_version(dest)
    save_model_version(
        dest,
        shipped.model,
        preprocessing=shipped.preprocessing,
        provenance=prov,
        metrics=metrics,
        name="default",
        description=DESCRIPTION,
        license=LICENSE,
        version=shipped.version,
        dtype="float16",
        overwrite=True,
    )
    return {
        "runs": runs,
        "best_epoch": result["best_epoch"],
        "epochs_run": result["epochs_run"],
        "seconds": result["seconds"],
        "val_ids": prov["split"]["val_ids"],
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2])), indent=1))
