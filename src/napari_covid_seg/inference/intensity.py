"""Lung-referenced intensity standardisation: a scanner's HU in the training images' scale.

The bundled model learnt from 8-bit slices whose stated window (W1500/L-600)
puts aerated lung near -1100 HU (median of the 50 training slices' 25th lung
percentile) and soft tissue near -100 HU; a calibrated scanner puts them near
-870 and +40 HU. Shown a scanner's CT as is, the model sees lung as bright as
faint ground glass and over-calls. This module measures the volume's own
landmark, the 25th percentile of the voxels inside the lung mask (the
aerated parenchyma, not the lesions), and maps intensities linearly so that
the landmark lands on the training value while soft tissue (``anchor_hu``)
stays where it is::

    x' = anchor + (x - anchor) * (anchor - target) / (anchor - landmark)

A model opts in through its ROI policy (``preprocessing["roi"]["standardize"]``);
the engine, the datasets of training and fine-tuning and learning within a
volume all apply the same map, computed from the same lung mask. Older model
versions, and volumes whose lung mask is implausible, are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Defaults of ``roi["standardize"]`` (HU; ``percentile`` of the lung voxels).
DEFAULT_STANDARDIZE: dict = {
    "percentile": 25.0,
    "target_hu": -1100.0,
    "anchor_hu": 40.0,
    "min_scale": 0.7,
    "max_scale": 1.6,
    "min_voxels": 2000,
    "smooth_mm": 0.0,
}

#: At most this many axial slices are smoothed to measure the landmark (evenly spaced).
LANDMARK_SLICES = 48


@dataclass(frozen=True)
class Standardization:
    """``x' = x * scale + offset`` in the image's own units (HU or 0..255).

    Attributes:
        scale, offset: the linear map.
        landmark_hu: the measured lung landmark, HU.
        target_hu: where the landmark is mapped to, HU.
    """

    scale: float
    offset: float
    landmark_hu: float
    target_hu: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        """float32 copy of ``x`` mapped (any shape)."""
        y = np.asarray(x, dtype=np.float32) * np.float32(self.scale)
        y += np.float32(self.offset)
        return y

    def in_windowed_units(self) -> Standardization:
        """The same map for 0..255 lung-windowed values (``HU = -1350 + v * 1500 / 255``)."""
        k = 1500.0 / 255.0
        offset = (self.offset + 1350.0 * (1.0 - self.scale)) / k
        return Standardization(self.scale, offset, self.landmark_hu, self.target_hu)

    def as_dict(self) -> dict:
        return {
            "landmark_hu": round(self.landmark_hu, 1),
            "target_hu": round(self.target_hu, 1),
            "scale": round(self.scale, 4),
            "offset": round(self.offset, 3),
        }


#: Test-time flips turn on by themselves above this lung noise (HU): twice the
#: median of the 50 training slices (25.7 HU), where a sharp kernel's noise
#: makes false ground glass flicker around the threshold.
AUTO_TTA_NOISE_HU = 50.0


def lung_noise_hu(
    canon: np.ndarray, lungs: np.ndarray, intensity: str = "hu", max_slices: int = 16
) -> float | None:
    """Noise inside the lungs, HU: 1.4826 x the median absolute 3 x 3 high-pass residual.

    Measured in-plane on at most ``max_slices`` evenly spaced slices of the
    canonical ``(S, P, L)`` image that hold lung, inside the lung mask eroded by
    one pixel (vessels are few there, and the median ignores them). A soft
    kernel gives about 10 HU, the 0..255 training slices 26 (median), a sharp
    lung kernel with low dose 60 and more. None without lung.
    """
    from scipy import ndimage

    from ..io.volume import WINDOWED

    inside = np.asarray(lungs) > 0
    if inside.ndim != 3:
        return None
    rows = _lung_rows(inside, max_slices)
    if len(rows) == 0:
        return None
    x = np.asarray(canon)[rows].astype(np.float32)
    residual = x - ndimage.uniform_filter(x, size=(1, 3, 3))
    core = ndimage.binary_erosion(inside[rows], structure=np.ones((1, 3, 3), bool))
    if int(np.count_nonzero(core)) < 100:
        return None
    sd = 1.4826 * float(np.median(np.abs(residual[core])))
    return sd * 1500.0 / 255.0 if intensity == WINDOWED else sd


def _lung_rows(inside: np.ndarray, at_most: int) -> np.ndarray:
    """Indices of at most ``at_most`` evenly spaced slices of ``inside`` (S, P, L) holding lung."""
    rows = np.flatnonzero(inside.reshape(len(inside), -1).any(axis=1))
    if len(rows) > at_most:
        rows = rows[np.linspace(0, len(rows) - 1, at_most).round().astype(int)]
    return rows


def standardize_spec(roi_spec: dict | None) -> dict | None:
    """The standardisation settings of an ROI policy, or None (off)."""
    s = (roi_spec or {}).get("standardize")
    if not s:
        return None
    return {**DEFAULT_STANDARDIZE, **(s if isinstance(s, dict) else {})}


def lung_landmark(
    canon: np.ndarray,
    lungs: np.ndarray,
    percentile: float = 25.0,
    *,
    smooth_mm: float = 0.0,
    spacing: tuple[float, ...] | None = None,
) -> float | None:
    """The ``percentile`` of the image inside ``lungs`` (same shape), in the image's units.

    With ``smooth_mm > 0`` the image is first smoothed in-plane (axes 1, 2 of
    ``(S, P, L)``; Gaussian sigma in mm, ``spacing`` the voxel size in mm) on at
    most :data:`LANDMARK_SLICES` evenly spaced slices that hold lung.
    """
    inside = np.asarray(lungs) > 0
    if inside.ndim == 3 and smooth_mm > 0:
        from scipy import ndimage

        rows = _lung_rows(inside, LANDMARK_SLICES)
        sp = tuple(spacing or (1.0, 1.0, 1.0))
        sigma = (0.0, smooth_mm / max(float(sp[1]), 1e-6), smooth_mm / max(float(sp[2]), 1e-6))
        img = ndimage.gaussian_filter(np.asarray(canon)[rows].astype(np.float32), sigma)
        inside = inside[rows]
        n = int(np.count_nonzero(inside))
        if n == 0:
            return None
        values = img[inside]
    else:
        n = int(np.count_nonzero(inside))
        if n == 0:
            return None
        values = np.asarray(canon)[inside]
    step = max(1, n // 400_000)
    return float(np.percentile(values[::step], percentile))


def standardization(
    canon: np.ndarray,
    lungs: np.ndarray | None,
    intensity: str,
    spec: dict | None,
    *,
    plausible: bool = True,
    spacing: tuple[float, ...] | None = None,
) -> Standardization | None:
    """The map for one canonical volume ``(S, P, L)``, or None (off, no or implausible lungs).

    Args:
        canon: the image, HU or 0..255 lung-windowed (``intensity``).
        lungs: its lung labels, same shape.
        spec: :func:`standardize_spec` of the model's ROI policy.
        plausible: the lung mask passed :func:`~.lungs.check_lungs`.
        spacing: ``(S, P, L)`` voxel size in mm (for ``spec["smooth_mm"]``).
    """
    from .lungs import hu_to_intensity

    if spec is None or lungs is None or not plausible:
        return None
    if int(np.count_nonzero(lungs)) < int(spec["min_voxels"]):
        return None
    landmark = lung_landmark(
        canon,
        lungs,
        float(spec["percentile"]),
        smooth_mm=float(spec.get("smooth_mm") or 0.0),
        spacing=spacing,
    )
    if landmark is None:
        return None
    anchor = hu_to_intensity(float(spec["anchor_hu"]), intensity)
    target = hu_to_intensity(float(spec["target_hu"]), intensity)
    if anchor - landmark <= 1e-6:
        return None
    scale = float(
        np.clip((anchor - target) / (anchor - landmark), spec["min_scale"], spec["max_scale"])
    )
    offset = anchor * (1.0 - scale)
    to_hu = _to_hu(intensity)
    return Standardization(scale, offset, to_hu(landmark), to_hu(landmark * scale + offset))


def _to_hu(intensity: str):
    from ..io.volume import WINDOWED

    if intensity == WINDOWED:
        return lambda v: -1350.0 + v * 1500.0 / 255.0
    return lambda v: v
