"""HU-limited painting ("threshold paint"): only voxels inside a HU range can be labelled.

Two ways in:

* :func:`paint_ball` / :func:`paint_ball_inplace` paint a disc (current axial slice)
  or a ball of a radius in mm, limited to ``hu_range``.
* :func:`restrict_edit_to_hu_range` post-filters any edit (e.g. a napari brush
  stroke): labelled voxels whose HU is outside the range go back to what they were.
  :func:`filter_change_to_hu_range` does the same for a napari ``paint`` event's
  ``(indices, old_values, new_values)``.

Erasing (setting voxels to 0) is always allowed. ``hu_range = (low, high)`` is
inclusive on both ends.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import EPS_MM, Box, check_mask, check_same_shape, check_spacing


def _check_hu_range(hu_range: Sequence[float]) -> tuple[float, float]:
    low, high = (float(v) for v in hu_range)
    if low > high:
        raise ValueError(f"hu_range must be (low, high) with low <= high, got {hu_range}")
    return low, high


def _ball_region(
    shape: Sequence[int],
    center_zyx: Sequence[float],
    radius_mm: float,
    spacing: tuple[float, ...],
    axial_only: bool,
) -> tuple[Box, np.ndarray] | None:
    """Box and boolean ball/disc inside it, or None if it misses the volume entirely."""
    box = []
    grids = []
    for axis, (c, s, n) in enumerate(zip(center_zyx, spacing, shape, strict=True)):
        c = float(c)
        flat = axis == 0 and axial_only
        if flat:
            lo = hi = int(np.floor(c + 0.5))
        else:
            reach = (radius_mm + EPS_MM) / s
            lo, hi = int(np.ceil(c - reach)), int(np.floor(c + reach))
        lo, hi = max(lo, 0), min(hi, int(n) - 1)
        if lo > hi:
            return None
        box.append(slice(lo, hi + 1))
        if flat:
            grids.append(np.zeros(1))
        else:
            grids.append((np.arange(lo, hi + 1, dtype=np.float64) - c) * s)
    shaped = np.ix_(*grids)
    dist2 = sum(g**2 for g in shaped)
    return tuple(box), np.asarray(np.sqrt(dist2) <= radius_mm + EPS_MM)


def paint_ball_inplace(
    mask: np.ndarray,
    center_zyx: Sequence[float],
    radius_mm: float,
    spacing: Sequence[float],
    label: int,
    image: np.ndarray | None = None,
    hu_range: Sequence[float] | None = None,
    axial_only: bool = True,
) -> Box | None:
    """Paint ``label`` into ``mask`` in place; return the box that may have changed.

    Args:
        mask: label mask ``(z, y, x)``, modified in place.
        center_zyx: centre in voxel index coordinates (may be fractional).
        radius_mm: voxels whose centre is within this distance (mm) are painted.
        spacing: voxel size in mm ``(z, y, x)``.
        label: value to paint; 0 erases (never HU-limited).
        image: CT in HU, same shape as ``mask`` (needed with ``hu_range``).
        hu_range: ``(low, high)`` inclusive; voxels outside are not painted.
        axial_only: True paints a disc in slice ``round(center_z)`` only; False a
            ball across slices.

    Returns:
        The painted box (slices) or None if the brush misses the volume.
    """
    mask = check_mask(mask)
    spacing_t = check_spacing(spacing, mask.ndim)
    if radius_mm < 0:
        raise ValueError("radius_mm must be >= 0")
    if len(center_zyx) != mask.ndim:
        raise ValueError(f"center_zyx needs {mask.ndim} coordinates, got {len(center_zyx)}")
    found = _ball_region(mask.shape, center_zyx, float(radius_mm), spacing_t, axial_only)
    if found is None:
        return None
    box, brush = found
    if label != 0 and hu_range is not None:
        if image is None:
            raise ValueError("hu_range needs the image (in HU) to compare against")
        check_same_shape(mask, image, "mask and image")
        low, high = _check_hu_range(hu_range)
        hu = image[box]
        brush &= (hu >= low) & (hu <= high)
    mask[box][brush] = label
    return box


def paint_ball(
    mask: np.ndarray,
    center_zyx: Sequence[float],
    radius_mm: float,
    spacing: Sequence[float],
    label: int,
    image: np.ndarray | None = None,
    hu_range: Sequence[float] | None = None,
    axial_only: bool = True,
) -> np.ndarray:
    """Copying form of :func:`paint_ball_inplace`: return a new mask with the brush applied."""
    out = check_mask(mask).copy()
    paint_ball_inplace(out, center_zyx, radius_mm, spacing, label, image, hu_range, axial_only)
    return out


def _outside(values: np.ndarray, hu_range: Sequence[float]) -> np.ndarray:
    low, high = _check_hu_range(hu_range)
    return (values < low) | (values > high)


def restrict_edit_to_hu_range_inplace(
    before: np.ndarray,
    after: np.ndarray,
    image: np.ndarray,
    hu_range: Sequence[float],
) -> int:
    """Revert, in ``after``, labelled voxels whose HU is outside ``hu_range``.

    A voxel is reverted to its ``before`` value when it changed, its new value is
    non-zero and its HU is outside the inclusive range. Erasures stay. Cost is one
    full comparison plus work proportional to the number of changed voxels.

    Returns:
        Number of voxels reverted.
    """
    check_same_shape(before, after, "before and after")
    check_same_shape(after, image, "mask and image")
    changed = np.flatnonzero(before != after)
    if changed.size == 0:
        return 0
    new = np.take(after, changed)
    hu = np.take(image, changed)
    revert = changed[(new != 0) & _outside(hu, hu_range)]
    np.put(after, revert, np.take(before, revert))
    return int(revert.size)


def restrict_edit_to_hu_range(
    before: np.ndarray,
    after: np.ndarray,
    image: np.ndarray,
    hu_range: Sequence[float],
) -> np.ndarray:
    """Return a copy of ``after`` where out-of-range labelled voxels keep their ``before`` value.

    See :func:`restrict_edit_to_hu_range_inplace`.
    """
    out = check_mask(after, "after").copy()
    restrict_edit_to_hu_range_inplace(check_mask(before, "before"), out, image, hu_range)
    return out


def filter_change_to_hu_range(
    indices: tuple[np.ndarray, ...],
    old_values: np.ndarray,
    new_values: np.ndarray | int,
    image: np.ndarray,
    hu_range: Sequence[float],
) -> np.ndarray:
    """Which entries of an index-based edit must be reverted (boolean, one per index).

    ``indices`` is a tuple of per-axis index arrays (as in a napari ``paint`` event);
    an entry must be reverted when its new value is non-zero, differs from the old
    value, and ``image[indices]`` is outside ``hu_range``.
    """
    hu = np.asarray(image[tuple(indices)])
    new = np.broadcast_to(np.asarray(new_values), hu.shape)
    old = np.broadcast_to(np.asarray(old_values), hu.shape)
    return (new != 0) & (new != old) & _outside(hu, hu_range)
