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


def write_labels_dicom_seg(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer drawn on a DICOM series as DICOM-SEG. Returns the paths written.

    The layer's ``metadata["nifti"]["dicom"]`` (copied from the image layer the
    reader made) names the source series; needs the ``dicom-seg`` extra.
    """
    from .io.dicom_seg import write_dicom_seg

    arr = np.asarray(data)
    if arr.ndim != 3:
        raise CovidSegError(f"a DICOM-SEG needs 3D labels on the series' grid, got {arr.ndim}D")
    like = volume_for_layer(arr, meta)
    # The model's untouched output is AUTOMATIC, a corrected one SEMIAUTOMATIC,
    # labels drawn without a prediction MANUAL.
    prediction = ((meta.get("metadata") or {}).get("covid_seg") or {}).get("prediction")
    if prediction is None:
        algorithm = "MANUAL"
    elif np.shape(prediction) == arr.shape and np.array_equal(prediction, arr):
        algorithm = "AUTOMATIC"
    else:
        algorithm = "SEMIAUTOMATIC"
    return [str(write_dicom_seg(Path(path), arr, like, algorithm_type=algorithm))]
