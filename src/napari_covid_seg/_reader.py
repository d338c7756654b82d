"""npe2 reader: NIfTI CT or a DICOM series -> napari Image (or Labels) layer.

Claims ``.nii``/``.nii.gz`` files, ``.dcm`` files (the whole series of the
file; a DICOM-SEG opens as Labels) and folders that hold DICOM files (their
largest CT series). A thin adapter over :mod:`napari_covid_seg.io`; see
docs/architecture.md for the geometry convention (napari world = patient LPS
mm, reversed axes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .io import WINDOWED, Volume, is_nifti_path, read_volume
from .io.dicom import distinct_series_paths, is_dicom_path, read_dicom
from .io.volume import LUNG_WINDOW

LayerData = tuple  # (data, kwargs, layer_type)


def napari_get_reader(path: str | Sequence[str]) -> Callable | None:
    """The reader for NIfTI paths or DICOM files/folders, else None (fast, never raises)."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or not all(isinstance(p, str | Path) and str(p) for p in paths):
        return None
    if all(is_nifti_path(p) for p in paths):
        return read_nifti
    if all(is_dicom_path(p) for p in paths):
        return read_dicom_layers
    return None


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
        if vol.extra.get("warning"):
            kwargs["metadata"]["warning"] = vol.extra["warning"]
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


def read_dicom_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read DICOM folders/files: one layer per series (a folder: its largest CT series).

    Notes (other series in the folder, skipped files) become warnings, which
    napari shows as notifications. Raises a one-line CovidSegError on bad input.
    """
    import warnings

    paths = [path] if isinstance(path, str | Path) else list(path)
    layers = []
    for p in distinct_series_paths(paths):
        vol = read_dicom(p)
        name = (vol.extra.get("dicom") or {}).get("name")
        if vol.is_mask and vol.source_path is not None:
            name = Path(vol.source_path).stem
        layers.append(volume_to_layer_data(vol, name=name))
        for note in vol.extra.get("notes", []):
            warnings.warn(note, stacklevel=2)
    return layers
