"""Evaluate the best default run on its validation split and ship it as the bundled fp16 model.

Usage (from the repository root, after
``napari-covid-seg train --config training/configs/default.yaml --out RUN``)::

    python training/recipes/ship_default.py RUN src/napari_covid_seg/bundled_models/default

Prints the validation metrics (fp32 and the shipped fp16, at 256x256 and at each
slice's native resolution) as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "covid-semiseg" / "train"
NAMES = ("dice", "iou", "precision", "sensitivity", "specificity", "accuracy")
DESCRIPTION = (
    "ResAttUnet (ResNet34 encoder + attention gates) trained from scratch on 40 of the 50 "
    "COVID-SemiSeg/MedSeg CT slices (10 for validation). Research use only; "
    "see docs/model_card.md."
)
LICENSE = (
    "Weights: research and non-commercial use only (trained on the MedSeg COVID-19 CT "
    "segmentation dataset as repackaged as COVID-SemiSeg); cite MedSeg and Inf-Net "
    "(Fan et al., IEEE TMI 2020). Code: BSD-3-Clause."
)


def _short(m: dict) -> dict:
    out = {k: round(m[k], 4) for k in NAMES}
    out.update(dice_mean=round(m["dice_mean"], 4), iou_mean=round(m["iou_mean"], 4))
    return out


def main(run: Path, dest: Path) -> dict:
    import torch

    from napari_covid_seg.models.checkpoint import load_model_version, save_model_version
    from napari_covid_seg.training.datasets import load_slice_folder, split_dataset
    from napari_covid_seg.training.evaluate import evaluate_slices

    torch.set_num_threads(1)
    result = json.loads((run / "result.json").read_text())
    cfg = result["config"]
    mv = load_model_version(run / "best")
    data = load_slice_folder(
        DATA, input_size=cfg["input_size"], rotate_k=cfg["rotate_k"], keep_native=True
    )
    _, val_idx, rec = split_dataset(data, cfg["val_fraction"], cfg["split_seed"])
    if rec["val_ids"] != result["split"]["val_ids"]:
        raise SystemExit("the validation split differs from the run's; wrong data folder?")
    val = data.subset(val_idx)

    def evaluate(model: torch.nn.Module) -> tuple[dict, dict]:
        return (
            evaluate_slices(model, val, device="cpu", native=False),
            evaluate_slices(model, val, device="cpu", native=True),
        )

    at_size, native = evaluate(mv.model)
    metrics: dict = {}
    for k in NAMES:
        metrics[f"val_{k}"] = at_size[k]
        metrics[f"val_{k}_mean"] = at_size[k + "_mean"]
    for k in NAMES:
        metrics[f"val_native_{k}"] = native[k]
        metrics[f"val_native_{k}_mean"] = native[k + "_mean"]
    metrics["val_slices"] = len(val_idx)
    metrics["best_epoch"] = result["best_epoch"]
    prov = dict(mv.provenance)
    prov.update(
        {
            "epochs_run": result["epochs_run"],
            "stopped": result["stopped"],
            "training_seconds": result["seconds"],
            "machine": "shared 2-core x86-64 CPU with avx512_bf16, no GPU; 1 torch thread",
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
        metrics=metrics,
        name="default",
        description=DESCRIPTION,
        license=LICENSE,
        dtype="float16",
        overwrite=True,
    )
    at16, native16 = evaluate(load_model_version(dest).model)
    return {
        "fp32_256": _short(at_size),
        "fp32_native": _short(native),
        "fp16_256": _short(at16),
        "fp16_native": _short(native16),
        "best_epoch": result["best_epoch"],
        "epochs_run": result["epochs_run"],
        "seconds": result["seconds"],
        "val_ids": rec["val_ids"],
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2])), indent=1))
