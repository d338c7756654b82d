"""Shared helpers of the correction tools: bounding boxes, spacing checks, footprints.

Every correction tool works on the bounding box of the region it can change
(padded by its reach), so a 300x512x512 mask with a small lesion costs a few
milliseconds instead of a full-volume pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import CovidSegError, GeometryMismatchError

EPS_MM = 1e-6
"""Distances within this of a radius count as on it (float round-off), everywhere."""

Box = tuple[slice, ...]
"""A bounding box: one ``slice(start, stop)`` per axis (stop exclusive)."""


class CorrectionError(CovidSegError, ValueError):
    """A correction tool was asked for something it cannot do (e.g. empty key slice)."""


def check_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Return ``mask`` as an ndarray, checking that it holds integer (or bool) labels."""
    mask = np.asarray(mask)
    if mask.dtype.kind not in "biu":
        raise TypeError(f"{name} must hold integer labels, got dtype {mask.dtype}")
    return mask


def check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Validate a voxel spacing in mm, one positive value per axis ``(z, y, x)``."""
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise GeometryMismatchError(
            f"spacing {values} has {len(values)} values but the mask has {ndim} axes; "
            "pass one voxel size in mm per axis (z, y, x)"
        )
    if not all(np.isfinite(s) and s > 0 for s in values):
        raise GeometryMismatchError(f"spacing {values} must be positive and finite (mm)")
    return values


def check_same_shape(a: np.ndarray, b: np.ndarray, names: str = "arrays") -> None:
    """Raise :class:`GeometryMismatchError` unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise GeometryMismatchError(
            f"{names} must have the same shape, got {a.shape} and {b.shape}; "
            "use the image the mask was made from"
        )


def bounding_box(region: np.ndarray) -> Box | None:
    """Tightest box holding every True voxel of ``region``, or None if it is empty.

    Cost: one reduction over the first axis, then reductions over the occupied
    slab only.
    """
    if region.ndim == 0:
        raise ValueError("bounding_box needs an array with at least one axis")
    other = tuple(range(1, region.ndim))
    first = np.flatnonzero(region.any(axis=other)) if other else np.flatnonzero(region)
    if first.size == 0:
        return None
    lo0, hi0 = int(first[0]), int(first[-1]) + 1
    slab = region[lo0:hi0]
    box = [slice(lo0, hi0)]
    for axis in range(1, region.ndim):
        rest = tuple(a for a in range(region.ndim) if a != axis)
        hits = np.flatnonzero(slab.any(axis=rest))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def pad_box(box: Box, pad: int | Sequence[int], shape: Sequence[int]) -> Box:
    """Grow ``box`` by ``pad`` voxels per side (or one pad per axis), clipped to ``shape``."""
    if isinstance(pad, (int, np.integer)):
        pads = [int(pad)] * len(shape)
    else:
        pads = [int(p) for p in pad]
    return tuple(
        slice(max(0, s.start - p), min(int(n), s.stop + p))
        for s, p, n in zip(box, pads, shape, strict=True)
    )


def union_box(a: Box | None, b: Box | None) -> Box | None:
    """Smallest box that holds both ``a`` and ``b`` (either may be None)."""
    if a is None:
        return b
    if b is None:
        return a
    return tuple(
        slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )


def box_of_flat_indices(flat: np.ndarray, shape: Sequence[int]) -> Box | None:
    """Bounding box of the voxels at C-order flat indices ``flat`` in an array of ``shape``."""
    if flat.size == 0:
        return None
    coords = np.unravel_index(flat, tuple(shape))
    return tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)


def radius_in_voxels(radius_mm: float, spacing: Sequence[float]) -> tuple[int, ...]:
    """Per-axis reach of a ball of ``radius_mm``: ``floor((radius + EPS_MM) / spacing)``."""
    return tuple(int(np.floor((radius_mm + EPS_MM) / s)) for s in spacing)


def ellipsoid_footprint(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean footprint of all voxel offsets within ``radius_mm`` (Euclidean, in mm).

    Shape ``(2*r_z+1, 2*r_y+1, 2*r_x+1)`` with ``r_a = floor(radius_mm / spacing_a)``;
    an ellipsoid in voxels, a ball in millimetres. Always holds the centre voxel.
    """
    reach = radius_in_voxels(radius_mm, spacing)
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, spacing, strict=True))
    return np.asarray(np.sqrt(dist2) <= radius_mm + EPS_MM)
