"""npe2 writer: a Labels layer -> ``.nii``/``.nii.gz`` with its image's geometry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import CovidSegError
from .io import Volume, is_nifti_path, write_mask


def volume_for_layer(data: np.ndarray, meta: dict[str, Any]) -> Volume:
    """The geometry a layer's voxels belong to: its NIfTI metadata, else its scale/translate."""
    metadata = meta.get("metadata") or {}
    if "nifti" in metadata:
        return Volume.from_metadata(data if data.ndim == 3 else data[None], metadata)
    return Volume.from_napari(
        np.asarray(data),
        scale=tuple(meta.get("scale", (1.0,) * data.ndim)),
        translate=tuple(meta.get("translate", (0.0,) * data.ndim)),
        affine=_affine_or_none(meta.get("affine"), data.ndim),
    )


def _affine_or_none(affine: Any, ndim: int) -> np.ndarray | None:
    if affine is None:
        return None
    a = np.asarray(affine, dtype=np.float64)
    if a.shape == (3, 3) and ndim == 2:
        full = np.eye(4)
        full[1:, 1:] = a
        return full
    return a if a.shape == (4, 4) else None


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer as a NIfTI mask. Returns the paths written."""
    if not is_nifti_path(path):
        path = str(path) + ".nii.gz"
    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        raise CovidSegError(f"can only save 2D or 3D labels as NIfTI, got {arr.ndim}D")
    like = volume_for_layer(arr, meta)
    written = write_mask(Path(path), arr if arr.ndim == 3 else arr[None], like)
    return [str(written)]
