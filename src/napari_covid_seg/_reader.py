"""npe2 reader: NIfTI CT (``.nii``, ``.nii.gz``) -> napari Image or Labels layer.

A thin adapter over :mod:`napari_covid_seg.io`; see docs/architecture.md for
the geometry convention (napari world = patient LPS mm, reversed axes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .io import WINDOWED, Volume, is_nifti_path, read_volume
from .io.volume import LUNG_WINDOW

LayerData = tuple  # (data, kwargs, layer_type)


def napari_get_reader(path: str | Sequence[str]) -> Callable | None:
    """Return the reader for NIfTI paths, else None (fast, never raises)."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or not all(isinstance(p, str | Path) and is_nifti_path(p) for p in paths):
        return None
    return read_nifti


def volume_to_layer_data(vol: Volume, name: str | None = None) -> LayerData:
    """A Volume as napari layer data with exact geometry and CT display defaults."""
    kwargs = vol.layer_kwargs()
    kwargs["name"] = name or (Path(vol.source_path).name if vol.source_path else "CT")
    for suffix in (".nii.gz", ".nii"):
        if kwargs["name"].lower().endswith(suffix):
            kwargs["name"] = kwargs["name"][: -len(suffix)]
    if vol.is_mask:
        return (vol.data, kwargs, "labels")
    kwargs["colormap"] = "gray"
    kwargs["blending"] = "translucent"
    if vol.intensity == WINDOWED:
        kwargs["contrast_limits"] = (0.0, 255.0)
        kwargs["metadata"]["warning"] = (
            "This image is already windowed to 0..255 (no Hounsfield units). "
            "It is treated as a lung-windowed image, not as HU."
        )
    else:
        kwargs["contrast_limits"] = LUNG_WINDOW
    return (vol.data, kwargs, "image")


def read_nifti(path: str | Sequence[str]) -> list[LayerData]:
    """Read one or more NIfTI files. Raises a one-line CovidSegError on bad files."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    layers = []
    for p in paths:
        vol = read_volume(p)
        layers.append(volume_to_layer_data(vol))
        if vol.intensity == WINDOWED and not vol.is_mask:
            import warnings

            warnings.warn(
                f"{Path(p).name}: values are 0..255, not Hounsfield units; treated as an "
                "image already in the lung window.",
                stacklevel=2,
            )
    return layers
