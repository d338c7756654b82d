"""Post-processing of predicted masks: thresholds, lung restriction, lung completion."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Predictions farther than this outside the lung mask are dropped (mm, in-plane).
LUNG_MARGIN_MM = 5.0


def mask_from_probability(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 {0, 1} mask ``probability > threshold`` (uint8 0..255 or float 0..1 input).

    For uint8 input the cut is at ``threshold * 255`` (ties at the cut are
    within the 1/510 quantisation of the stored probability).
    """
    p = np.asarray(probability)
    if p.dtype == np.uint8:
        return (p > np.float32(threshold) * 255.0).astype(np.uint8)
    return (p > threshold).astype(np.uint8)


def restrict_to_lungs(
    mask: np.ndarray,
    lungs: np.ndarray,
    *,
    axial_axis: int = 0,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    margin_mm: float = LUNG_MARGIN_MM,
) -> int:
    """In place: zero ``mask`` outside the lungs dilated by ``margin_mm`` in-plane.

    Only slices with predictions are touched (a separable max filter per slice).

    Args:
        mask: ``(z, y, x)`` uint8 lesion mask, modified in place.
        lungs: same shape, nonzero inside the lungs.
        axial_axis: source axis of the axial slices.
        spacing: ``(z, y, x)`` voxel spacing in mm.
    Returns:
        The number of voxels removed.
    """
    if mask.shape != lungs.shape:
        raise ValueError(f"mask {mask.shape} and lungs {lungs.shape} differ in shape")
    m = np.moveaxis(mask, axial_axis, 0)
    lu = np.moveaxis(lungs, axial_axis, 0)
    plane_spacing = [s for a, s in enumerate(spacing) if a != axial_axis]
    # voxels whose centre lies within margin_mm of a lung voxel centre (per axis)
    size = tuple(2 * int(margin_mm / max(s, 1e-6) + 1e-6) + 1 for s in plane_spacing)
    removed = 0
    for i in np.nonzero(m.reshape(m.shape[0], -1).any(axis=1))[0]:
        inside = lu[i] > 0
        if margin_mm > 0:
            inside = ndimage.maximum_filter(inside, size=size)
        drop = (m[i] > 0) & ~inside
        n = int(np.count_nonzero(drop))
        if n:
            m[i][drop] = 0
            removed += n
    return removed


def complete_lungs(lungs: np.ndarray, mask: np.ndarray, *, axial_axis: int = 0) -> np.ndarray:
    """Lung labels with the lesion voxels just outside them added to the nearest lung.

    A threshold lung mask misses dense subpleural consolidation; adding the
    (lung-restricted) lesions keeps "% of lung involved" at or below 100.
    Returns ``lungs`` itself when nothing is missing, else a new array.
    """
    missing = (mask > 0) & (lungs == 0)
    if not missing.any() or not lungs.any():
        return lungs
    out = lungs.copy()
    o = np.moveaxis(out, axial_axis, 0)
    miss = np.moveaxis(missing, axial_axis, 0)
    for i in np.nonzero(miss.reshape(miss.shape[0], -1).any(axis=1))[0]:
        sl = o[i]
        if not sl.any():
            continue
        _, (iy, ix) = ndimage.distance_transform_edt(sl == 0, return_indices=True)
        nearest = sl[iy, ix]
        sl[miss[i]] = nearest[miss[i]]
    return out
