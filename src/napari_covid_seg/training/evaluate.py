"""Evaluate a model version on a labelled dataset (the ``evaluate`` command).

:func:`evaluate_model` runs the path a user runs: every case is a NIfTI file
in HU with a true affine, read by the plugin's reader and segmented by the
engine with default settings (lung mask, lung ROI, restriction), then scored
at native resolution; metrics are pooled over all pixels and averaged per
axial slice (see :mod:`.metrics`). Every accuracy figure in docs/ comes from
here. :func:`evaluate_slices` is the trainer's quick check on preprocessed
slices (model selection and fine-tune comparisons), not a user figure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DatasetError
from .datasets import SliceDataset
from .metrics import MetricAccumulator, confusion_per_slice, segmentation_metrics
from .trainer import resolve_device, use_bf16

#: Truth value of voxels that are not scored (an export's unreviewed slices).
IGNORE = 255


@torch.no_grad()
def predict_slices(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 8,
    bf16: bool = False,
    in_channels: int = 3,
    preprocessing: dict | None = None,
) -> np.ndarray:
    """Probabilities ``(N, S, S)`` float32 for slices ``(N, S, S)`` in [0, 1].

    ``preprocessing``: the model version's (a click model gets zero guidance).
    """
    from ..models.guidance import model_input

    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[i : i + batch_size], dtype=np.float32))[:, None]
        x = model_input(x.to(device), in_channels, preprocessing).contiguous()
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else _null()
        with ctx:
            logits = model(x)
        out.append(torch.sigmoid(logits.float())[:, 0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), np.float32)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def evaluate_slices(
    model: torch.nn.Module,
    data: SliceDataset,
    *,
    threshold: float = 0.5,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    amp: str = "off",
    native: bool = True,
    preprocessing: dict | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``data`` (native resolution where native masks are kept).

    ``preprocessing``: the model version's (click models: zero guidance).
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model = model.to(dev)
    in_ch = int(getattr(getattr(model, "config", None), "in_channels", 3))
    probs = predict_slices(
        model,
        data.images,
        device=dev,
        batch_size=batch_size,
        bf16=use_bf16(amp, dev),
        in_channels=in_ch,
        preprocessing=preprocessing,
    )
    acc = MetricAccumulator()
    if native and data.native_masks is not None:
        for p, truth in zip(probs, data.native_masks, strict=True):
            t = torch.from_numpy(p)[None, None]
            up = F.interpolate(t, size=truth.shape, mode="bilinear", align_corners=False)[0, 0]
            acc.update((up.numpy() > threshold)[None], truth[None])
    else:
        acc.update(probs > threshold, data.masks)
    result = acc.compute()
    result["resolution"] = "native" if native and data.native_masks is not None else "input"
    return result


def load_labelled_slices(
    root: str | os.PathLike,
    *,
    rotate_k: int = 0,
    transpose: bool = False,
    lesion_labels: Sequence[int] | None = None,
    ids: Sequence[str] | None = None,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """A 2D slice folder as ``[(id, image, mask)]`` in canonical orientation, native size.

    ``rotate_k`` (``np.rot90``) and then ``transpose`` turn each file into the
    radiological view (rows anterior -> posterior, columns patient right ->
    left). COVID-SemiSeg JPEGs need ``transpose=True``: their columns run
    anterior -> posterior and their rows patient right -> left. ``ids``: only
    these slices, in this order.
    """
    from pathlib import Path

    from ..io.images2d import read_image2d, read_mask2d
    from .datasets import _index_files, binarize_mask

    root = Path(root)
    images, masks = _index_files(root / "images"), _index_files(root / "masks")
    wanted = list(ids) if ids is not None else sorted(images, key=_sort_key)
    out = []
    labels = tuple(lesion_labels) if lesion_labels is not None else None
    for i in wanted:
        if i not in images or i not in masks:
            raise DatasetError(f"{root}: no image and mask for slice {i!r}")
        img, msk = read_image2d(images[i]), read_mask2d(masks[i])
        msk = binarize_mask(msk, labels, str(masks[i]))
        if rotate_k % 4:
            img, msk = np.rot90(img, rotate_k), np.rot90(msk, rotate_k)
        if transpose:
            img, msk = img.T, msk.T
        out.append((i, np.ascontiguousarray(img), np.ascontiguousarray(msk)))
    return out


def _sort_key(s: str) -> tuple[int, int | str]:
    return (0, int(s)) if s.isdigit() else (1, s)


def evaluate_cases(
    predictor: Any,
    cases: Sequence[tuple[str, Any, np.ndarray]],
    *,
    workdir: str | os.PathLike,
    **segment_options: Any,
) -> dict[str, Any]:
    """Metrics of the user path on ``[(name, Volume, truth)]``.

    Each Volume is written as a NIfTI file, read back with the plugin's reader
    and segmented by :func:`inference.segment` exactly as the ``segment``
    command does (defaults unless ``segment_options`` says otherwise).
    ``truth`` has the Volume's ``(z, y, x)`` shape; axial slices holding the
    value :data:`IGNORE` (nnU-Net's ignore label: not reviewed) are not
    scored. Returns pooled and
    per-slice metrics (axial slices), per-case Dice, confusion counts
    (``case_counts``) and lung-mask reports.
    """
    from pathlib import Path

    from ..inference import segment
    from ..io import read_volume, write_volume

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    acc = MetricAccumulator()
    per_case = []
    counts: dict[str, list[int]] = {}
    for name, vol, truth in cases:
        path = work / f"{name}.nii.gz"
        write_volume(path, vol.data, vol)
        image = read_volume(path, as_mask=False)
        result = segment(image, predictor, **segment_options)
        axis = result.axial_axis
        pred = np.moveaxis(result.mask, axis, 0)
        ref = np.moveaxis(np.asarray(truth), axis, 0)
        scored = ~(ref == IGNORE).reshape(len(ref), -1).any(axis=1)  # reviewed slices only
        pred, ref = pred[scored], ref[scored]
        if len(ref) == 0:
            path.unlink(missing_ok=True)
            continue
        acc.update(pred, ref > 0)
        counts[name] = confusion_per_slice(pred, ref > 0).sum(axis=0).tolist()
        case = segmentation_metrics(pred, ref > 0)
        report = result.lung_report or {}
        per_case.append(
            {
                "case": name,
                "dice": round(case["dice"], 4),
                "lungs": report.get("status", "off"),
                "reason": report.get("reason", ""),
                "tta": bool((result.tta or {}).get("on")),
            }
        )
        path.unlink(missing_ok=True)
    out = acc.compute()
    out["cases"] = per_case
    out["case_counts"] = counts  # [TP, FP, FN, TN] per case, to pool any subset later
    out["restriction_skipped"] = sum(c["lungs"] == "skipped" for c in per_case)
    out["tta_on"] = sum(c["tta"] for c in per_case)  # flips used (asked for, or noisy scans)
    return out


def evaluate_model(
    model: str | os.PathLike,
    data_dirs: Sequence[str | os.PathLike],
    *,
    rotate_k: int = 0,
    transpose: bool = False,
    lesion_labels: Sequence[int] | None = None,
    device: str = "auto",
    threshold: float | None = None,
    subset: str = "all",
    restrict_to_lungs: bool = True,
    tta: bool = False,
    store: Any = None,
) -> dict[str, Any]:
    """Evaluate a model version through the path a user runs (NIfTI -> reader -> segment).

    2D slice folders become one-slice HU NIfTI files with their true anatomy
    (:mod:`.acquisition`; 0..255 slices mapped with the lung window); nnU-Net
    folders are read as they are. ``subset="val"`` keeps the slices the model
    was validated on (its provenance), so training slices are never scored.
    """
    import tempfile

    from ..inference import load_predictor
    from ..models.checkpoint import load_model_version
    from ..models.store import ModelStore
    from .acquisition import slice_volume, windowed_to_hu
    from .datasets import detect_layout

    store = store if store is not None else ModelStore()
    path = store.resolve(model)
    mv = load_model_version(path, device="cpu")
    ids = None
    if subset == "val":
        split = (mv.provenance or {}).get("split") or {}
        ids = split.get("val_ids") or split.get("val_cases")
        if not ids:
            raise DatasetError(f"model {mv.name!r} records no validation slices in its provenance")
        ids = [str(i).split("/", 1)[-1] for i in ids]
    elif subset != "all":
        raise ValueError(f"subset must be 'all' or 'val', got {subset!r}")
    predictor = load_predictor(mv, device=device, tta=tta)
    options: dict[str, Any] = {"restrict_to_lungs": restrict_to_lungs, "uncertainty": False}
    if threshold is not None:
        options["threshold"] = threshold
    cases: list[tuple[str, Any, np.ndarray]] = []
    for root in data_dirs:
        if detect_layout(root) == "nnunet_v2":
            cases += _nnunet_cases(root, lesion_labels, ids)
            continue
        wanted = ids
        if ids is not None:
            from pathlib import Path

            have = {p.stem for p in (Path(root) / "images").iterdir()}
            wanted = [i for i in ids if i in have]
        for name, img, msk in load_labelled_slices(
            root, rotate_k=rotate_k, transpose=transpose, lesion_labels=lesion_labels, ids=wanted
        ):
            hu = windowed_to_hu(img) if img.dtype == np.uint8 or img.max() <= 255 else img
            cases.append((name, slice_volume(hu), msk[None]))
    if not cases:
        raise DatasetError("no labelled slices to evaluate")
    with tempfile.TemporaryDirectory(prefix="covid-seg-eval-") as tmp:
        result = evaluate_cases(predictor, cases, workdir=tmp, **options)
    result.update(
        {
            "model": mv.name,
            "model_path": str(path),
            "data": [os.fspath(d) for d in data_dirs],
            "threshold": float(
                threshold if threshold is not None else mv.preprocessing.get("threshold", 0.5)
            ),
            "subset": subset,
            "lung_restriction": restrict_to_lungs,
            "tta": tta,
            "resolution": "native",
            "path": "NIfTI (HU, true affine) -> reader -> segment",
        }
    )
    return result


def _nnunet_cases(
    root: str | os.PathLike, lesion_labels: Sequence[int] | None, ids: Sequence[str] | None
) -> list[tuple[str, Any, np.ndarray]]:
    """``[(case, image Volume, binary truth)]`` of an nnU-Net v2 raw folder."""
    from pathlib import Path

    from ..io import read_volume
    from .datasets import _dataset_json, _ignore_label, binarize_mask

    root = Path(root)
    ignore = _ignore_label(_dataset_json(root))
    out = []
    for lab in sorted((root / "labelsTr").glob("*.nii*")):
        case = lab.name.split(".nii")[0]
        if ids is not None and case not in ids:
            continue
        image = read_volume(next((root / "imagesTr").glob(f"{case}_0000.nii*")), as_mask=False)
        raw = read_volume(lab, as_mask=True).data
        labels = tuple(lesion_labels) if lesion_labels is not None else None
        ignored = raw == ignore if ignore is not None else None
        if ignored is not None:
            if labels is None:
                labels = tuple(int(v) for v in np.unique(raw) if v not in (0, ignore)) or (1,)
            raw = np.where(ignored, 0, raw)
        truth = binarize_mask(raw, labels, str(lab))
        if ignored is not None:
            truth[ignored] = IGNORE  # unreviewed: not scored
        out.append((case, image, truth))
    return out
