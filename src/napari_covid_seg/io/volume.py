"""`Volume`: a CT (or mask) array in napari order together with its geometry."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import orientation as ori

#: Intensity kinds a CT image can have.
HU = "hu"
WINDOWED = "windowed_0_255"
#: Lung window W1500/L-600 as (low, high) HU.
LUNG_WINDOW = (-1350.0, 150.0)


@dataclass
class Volume:
    """A 3D array in napari order ``(z, y, x) = (k, j, i)`` and its geometry.

    Attributes:
        data: ``(z, y, x)`` array. CT in Hounsfield units (int16 when lossless,
            else float32); masks as integer labels. A 2D file is ``(1, y, x)``.
        affine: 4x4 NIfTI affine, voxel ``(i, j, k)`` -> RAS+ mm, exactly as
            the file had it.
        header: the source NIfTI header (kept so written masks carry the same
            qform/sform, codes and units), or None for arrays made in memory.
        source_path: where it was read from, if anywhere.
        source_shape: the array shape in the file, NIfTI order (e.g. ``(X, Y)``
            for a 2D file, ``(X, Y, Z, 1)`` for a singleton 4D file).
        intensity: ``"hu"`` or ``"windowed_0_255"`` (already lung-windowed).
        is_mask: the file holds labels, not intensities.
        extra: free-form; ``extra["dicom"]`` is the source DICOM series
            reference of a Volume read by :func:`~.dicom.read_dicom`.
    """

    data: np.ndarray
    affine: np.ndarray
    header: Any = None
    source_path: Path | None = None
    source_shape: tuple[int, ...] | None = None
    intensity: str = HU
    is_mask: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.data.ndim != 3:
            raise ValueError(f"Volume.data must be 3D (z, y, x), got shape {self.data.shape}")
        if self.source_shape is None:
            self.source_shape = tuple(int(s) for s in self.data.shape[::-1])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing in mm, napari order ``(z, y, x)``."""
        return ori.spacing_zyx(self.affine)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (cm^3)."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def napari_affine(self) -> np.ndarray:
        """4x4: napari index ``(z, y, x)`` -> world ``(S, P, L)`` mm."""
        return ori.napari_affine(self.affine)

    @property
    def reorientation(self) -> ori.Reorientation:
        """Transposes/flips to the canonical SPL orientation used by the model."""
        return ori.reorientation(self.affine)

    def with_data(self, data: np.ndarray, *, is_mask: bool | None = None) -> Volume:
        """Same geometry, other voxels (e.g. a mask of this image)."""
        if data.shape != self.data.shape:
            from ..errors import GeometryMismatchError

            raise GeometryMismatchError(
                f"array shape {data.shape} does not match the image shape {self.data.shape}"
            )
        return replace(
            self,
            data=data,
            is_mask=self.is_mask if is_mask is None else is_mask,
            extra=dict(self.extra),
        )

    # -- napari ---------------------------------------------------------------
    def geometry_metadata(self) -> dict:
        """JSON-friendly geometry for ``layer.metadata["nifti"]``."""
        meta: dict = {
            "affine": self.affine.tolist(),
            "source_shape": list(self.source_shape or ()),
            "source_path": str(self.source_path) if self.source_path else None,
            "intensity": self.intensity,
        }
        if self.header is not None:
            meta["header_bytes"] = bytes(self.header.binaryblock)
            meta["header_class"] = type(self.header).__name__
            q, qc = self.header.get_qform(coded=True)
            s, sc = self.header.get_sform(coded=True)
            meta["qform_code"] = int(qc)
            meta["sform_code"] = int(sc)
            meta["qform"] = None if q is None else np.asarray(q).tolist()
            meta["sform"] = None if s is None else np.asarray(s).tolist()
        if self.extra.get("dicom"):
            # The source DICOM series (UIDs, folder, file order; no patient tags),
            # so a mask drawn on this layer can be written as DICOM-SEG.
            meta["dicom"] = dict(self.extra["dicom"])
        return meta

    def layer_kwargs(self) -> dict:
        """Keyword arguments for a napari layer that puts voxels where they belong."""
        kw = ori.layer_geometry(self.affine)
        kw["units"] = ("mm", "mm", "mm")
        kw["metadata"] = {"nifti": self.geometry_metadata()}
        return kw

    @classmethod
    def from_metadata(cls, data: np.ndarray, metadata: dict) -> Volume:
        """Rebuild a Volume from a layer's data and ``metadata["nifti"]``."""
        import nibabel as nib

        meta = metadata.get("nifti") if "nifti" in metadata else metadata
        if not meta or "affine" not in meta:
            raise KeyError("layer metadata carries no NIfTI geometry")
        header = None
        if meta.get("header_bytes"):
            klass = (
                nib.Nifti2Header
                if meta.get("header_class") == "Nifti2Header"
                else (nib.Nifti1Header)
            )
            header = klass(binaryblock=meta["header_bytes"])
        src = meta.get("source_path")
        return cls(
            data=np.asarray(data),
            affine=np.asarray(meta["affine"], dtype=np.float64),
            header=header,
            source_path=Path(src) if src else None,
            source_shape=tuple(meta["source_shape"]) if meta.get("source_shape") else None,
            intensity=meta.get("intensity", HU),
            extra={"dicom": dict(meta["dicom"])} if meta.get("dicom") else {},
        )

    @classmethod
    def from_napari(
        cls,
        data: np.ndarray,
        *,
        scale: tuple[float, ...] = (1.0, 1.0, 1.0),
        translate: tuple[float, ...] = (0.0, 0.0, 0.0),
        affine: np.ndarray | None = None,
        intensity: str = HU,
    ) -> Volume:
        """A Volume for a plain napari layer without NIfTI metadata."""
        if data.ndim == 2:
            data = data[None]
            scale = (1.0, *tuple(scale)[-2:])
            translate = (0.0, *tuple(translate)[-2:])
        lin = np.diag(np.asarray(scale, dtype=np.float64))
        n = np.eye(4)
        n[:3, :3] = lin
        n[:3, 3] = translate
        if affine is not None:
            n = np.asarray(affine, dtype=np.float64) @ n
        return cls(data=data, affine=ori.nifti_affine_from_napari(n), intensity=intensity)
