"""Lesion burden: volumes in mL, percent of each lung involved, lesion count, density split.

Density: a lesion voxel at or above :data:`CONSOLIDATION_HU` counts as
consolidation, below it as ground-glass opacity (GGO). The boundary is the
usual quantitative-CT cut between the two patterns (GGO roughly -750..-300 HU,
consolidation above); on images already in the lung window (0..255) it is
mapped through the same window. :class:`~napari_covid_seg.correction.live.LiveBurden`
keeps these numbers current while a mask is edited.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .lungs import LEFT_LUNG, RIGHT_LUNG, hu_to_intensity

#: Lesion voxels at or above this HU are consolidation, below it ground glass.
CONSOLIDATION_HU = -300.0

#: 26-connectivity: thick slices make one lesion touch itself diagonally.
_FULL = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class Quantification:
    """Lesion burden of one volume. Volumes in mL; percentages 0..100 (None without lungs)."""

    lesion_ml: float
    n_lesions: int
    lung_ml: float | None = None
    right_lung_ml: float | None = None
    left_lung_ml: float | None = None
    right_lesion_ml: float | None = None
    left_lesion_ml: float | None = None
    percent_lungs: float | None = None
    percent_right: float | None = None
    percent_left: float | None = None
    ggo_ml: float | None = None
    consolidation_ml: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line, e.g. ``lesions 41.2 mL in 6 lesions, 3.1% of lungs (R 2.0%, L 4.3%)``."""
        noun = "lesion" if self.n_lesions == 1 else "lesions"
        text = f"lesions {self.lesion_ml:.1f} mL in {self.n_lesions} {noun}"
        if self.percent_lungs is not None:
            text += (
                f", {self.percent_lungs:.1f}% of lungs ({self.lung_ml:.0f} mL;"
                f" R {_pct(self.percent_right)}, L {_pct(self.percent_left)})"
            )
        if self.ggo_ml is not None and self.consolidation_ml is not None:
            text += f"; GGO {self.ggo_ml:.1f} mL, consolidation {self.consolidation_ml:.1f} mL"
        return text


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _percent(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def from_counts(
    voxel_ml: float,
    lesion_voxels: int,
    n_lesions: int,
    lung_voxels: tuple[int, int] | None = None,
    lesion_in_lung: tuple[int, int] | None = None,
    **density: float,
) -> Quantification:
    """A :class:`Quantification` from voxel counts.

    Args:
        voxel_ml: one voxel's volume in mL.
        lesion_voxels, n_lesions: lesion voxels and connected lesions.
        lung_voxels: ``(right, left)`` lung voxels, or None without a lung mask.
        lesion_in_lung: ``(right, left)`` lesion voxels inside each lung.
        density: ``ggo_ml`` / ``consolidation_ml`` where known.
    """
    v = voxel_ml
    if lung_voxels is None:
        return Quantification(lesion_ml=lesion_voxels * v, n_lesions=n_lesions, **density)
    n_r, n_l = lung_voxels
    les_r, les_l = lesion_in_lung or (0, 0)
    return Quantification(
        lesion_ml=lesion_voxels * v,
        n_lesions=n_lesions,
        lung_ml=(n_r + n_l) * v,
        right_lung_ml=n_r * v,
        left_lung_ml=n_l * v,
        right_lesion_ml=les_r * v,
        left_lesion_ml=les_l * v,
        percent_lungs=_percent(les_r + les_l, n_r + n_l),
        percent_right=_percent(les_r, n_r),
        percent_left=_percent(les_l, n_l),
        **density,
    )


def consolidation_threshold(intensity: str = "hu", hu: float = CONSOLIDATION_HU) -> float:
    """The GGO/consolidation boundary in an image's units (HU, or 0..255 lung window)."""
    return float(hu_to_intensity(hu, intensity))


def count_lesions(mask: np.ndarray) -> int:
    """Number of 3D connected components (26-connectivity) of a binary mask."""
    _, n = ndimage.label(np.asarray(mask) > 0, structure=_FULL)
    return int(n)


def quantify(
    mask: np.ndarray,
    voxel_volume_ml: float,
    lungs: np.ndarray | None = None,
    image: np.ndarray | None = None,
    dense_from: float | None = None,
) -> Quantification:
    """Lesion burden of a ``(z, y, x)`` binary ``mask``.

    Args:
        mask: lesion mask (nonzero = lesion).
        voxel_volume_ml: volume of one voxel in mL (``Volume.voxel_volume_ml``).
        lungs: optional label array (0, :data:`RIGHT_LUNG`, :data:`LEFT_LUNG`),
            same shape. The involved percentage of a lung is its lesion voxels
            over its voxels; lesion voxels outside both lungs count in
            ``lesion_ml`` but in no percentage.
        image: optional CT voxels (same shape) for the GGO/consolidation split.
        dense_from: lesion voxels with ``image >= dense_from`` are consolidation
            (default :func:`consolidation_threshold` of HU data).
    """
    lesion = np.asarray(mask) > 0
    n_lesion = int(np.count_nonzero(lesion))
    n_components = count_lesions(lesion)
    v = float(voxel_volume_ml)
    density: dict[str, float] = {}
    if image is not None:
        if np.shape(image) != lesion.shape:
            raise ValueError(f"image {np.shape(image)} and mask {lesion.shape} differ in shape")
        threshold = consolidation_threshold() if dense_from is None else float(dense_from)
        n_dense = int(np.count_nonzero(np.asarray(image)[lesion] >= threshold))
        density = {"ggo_ml": (n_lesion - n_dense) * v, "consolidation_ml": n_dense * v}
    if lungs is None:
        return Quantification(lesion_ml=n_lesion * v, n_lesions=n_components, **density)
    if lungs.shape != lesion.shape:
        raise ValueError(f"lung labels {lungs.shape} and mask {lesion.shape} differ in shape")
    lung_counts = np.bincount(lungs.ravel(), minlength=3)
    lesion_counts = np.bincount(lungs[lesion].ravel(), minlength=3)
    return from_counts(
        v,
        n_lesion,
        n_components,
        (int(lung_counts[RIGHT_LUNG]), int(lung_counts[LEFT_LUNG])),
        (int(lesion_counts[RIGHT_LUNG]), int(lesion_counts[LEFT_LUNG])),
        **density,
    )
