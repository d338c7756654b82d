"""Lesion burden: volumes in mL, percent of each lung involved, lesion count."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .lungs import LEFT_LUNG, RIGHT_LUNG

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
        return text


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _percent(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def count_lesions(mask: np.ndarray) -> int:
    """Number of 3D connected components (26-connectivity) of a binary mask."""
    _, n = ndimage.label(np.asarray(mask) > 0, structure=_FULL)
    return int(n)


def quantify(
    mask: np.ndarray, voxel_volume_ml: float, lungs: np.ndarray | None = None
) -> Quantification:
    """Lesion burden of a ``(z, y, x)`` binary ``mask``.

    Args:
        mask: lesion mask (nonzero = lesion).
        voxel_volume_ml: volume of one voxel in mL (``Volume.voxel_volume_ml``).
        lungs: optional label array (0, :data:`RIGHT_LUNG`, :data:`LEFT_LUNG`),
            same shape. The involved percentage of a lung is its lesion voxels
            over its voxels; lesion voxels outside both lungs count in
            ``lesion_ml`` but in no percentage.
    """
    lesion = np.asarray(mask) > 0
    n_lesion = int(np.count_nonzero(lesion))
    n_components = count_lesions(lesion)
    v = float(voxel_volume_ml)
    if lungs is None:
        return Quantification(lesion_ml=n_lesion * v, n_lesions=n_components)
    if lungs.shape != lesion.shape:
        raise ValueError(f"lung labels {lungs.shape} and mask {lesion.shape} differ in shape")
    lung_counts = np.bincount(lungs.ravel(), minlength=3)
    lesion_counts = np.bincount(lungs[lesion].ravel(), minlength=3)
    n_r, n_l = int(lung_counts[RIGHT_LUNG]), int(lung_counts[LEFT_LUNG])
    les_r, les_l = int(lesion_counts[RIGHT_LUNG]), int(lesion_counts[LEFT_LUNG])
    return Quantification(
        lesion_ml=n_lesion * v,
        n_lesions=n_components,
        lung_ml=(n_r + n_l) * v,
        right_lung_ml=n_r * v,
        left_lung_ml=n_l * v,
        right_lesion_ml=les_r * v,
        left_lesion_ml=les_l * v,
        percent_lungs=_percent(les_r + les_l, n_r + n_l),
        percent_right=_percent(les_r, n_r),
        percent_left=_percent(les_l, n_l),
    )
