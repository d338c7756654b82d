"""Morphological mask edits: islands, holes, smoothing, exact millimetre margins.

All functions take a label mask ``(z, y, x)`` (integer, 0 = background) and a voxel
spacing ``(z, y, x)`` in mm where distances matter, and return a NEW mask of the same
dtype. Voxels of other labels are never overwritten.

Cost: islands and holes label the bounding box of the label once; margins and
smoothing run window by window around the label's boundary only (``_local``) with a
footprint-row engine (``_ball``), so they scale with the lesion surface, not the
volume, and never allocate full-volume float arrays.

At the image border: :func:`shrink` does not treat the outside as background (a
lesion touching the border is not eroded from that side) and the median replicates
the edge voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from ._ball import Ball
from ._common import (
    Box,
    bounding_box,
    check_mask,
    check_spacing,
    pad_box,
)
from ._local import run_local_operator, write_region

SmoothMethod = Literal["median", "closing", "opening"]

_BLOCK: tuple[int, ...] | None = None
"""Block size for the windowed operators (None = ``_local.DEFAULT_BLOCK``)."""


def _check_label(label: int) -> int:
    label = int(label)
    if label == 0:
        raise ValueError("label must be a non-zero lesion label (0 is background)")
    return label


def _check_connectivity(connectivity: int, ndim: int) -> int:
    if not 1 <= int(connectivity) <= ndim:
        raise ValueError(f"connectivity must be 1..{ndim} (faces, edges, corners)")
    return int(connectivity)


def remove_small_islands(
    mask: np.ndarray,
    min_volume_mm3: float,
    spacing: Sequence[float],
    label: int | None = None,
    connectivity: int = 1,
) -> np.ndarray:
    """Drop connected components whose volume is below ``min_volume_mm3``.

    Args:
        mask: label mask ``(z, y, x)``.
        min_volume_mm3: components with ``n_voxels * prod(spacing) < min_volume_mm3``
            are set to 0; components exactly at the threshold are kept.
        spacing: voxel size in mm ``(z, y, x)``.
        label: only components of this label; None = components of all non-zero
            voxels together (a component may then span several labels).
        connectivity: 1 = faces (6-neighbourhood in 3D), 2 = + edges (18),
            3 = + corners (26).

    Returns:
        New mask, same dtype.
    """
    mask = check_mask(mask)
    spacing = check_spacing(spacing, mask.ndim)
    connectivity = _check_connectivity(connectivity, mask.ndim)
    region = mask != 0 if label is None else mask == label
    box = bounding_box(region)
    out = mask.copy()
    if box is None:
        return out
    crop = np.ascontiguousarray(region[box])  # labelling a strided view is ~3x slower
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    components, n = ndimage.label(crop, structure=structure)
    if n == 0:
        return out
    # Work on the foreground voxels only: a bincount over the whole box is slow.
    voxels = np.flatnonzero(crop)
    ids = components.reshape(-1)[voxels]
    counts = np.bincount(ids, minlength=n + 1)
    drop = counts * float(np.prod(spacing)) < float(min_volume_mm3)
    drop[0] = False
    np.put(out[box], voxels[drop[ids]], 0)
    return out


def fill_holes(mask: np.ndarray, label: int = 1, per_slice: bool = True) -> np.ndarray:
    """Fill background cavities fully enclosed by ``label``.

    Args:
        mask: label mask ``(z, y, x)``.
        label: the label whose holes are filled.
        per_slice: True fills 2D holes in each axial slice (in-plane 4-connected
            background not reaching the slice border); False fills 3D cavities
            (6-connected background not reaching the volume border).

    Returns:
        New mask where enclosed background voxels (value 0) become ``label``; voxels
        of other labels inside a hole are left alone.
    """
    mask = check_mask(mask)
    label = _check_label(label)
    region = mask == label
    box = bounding_box(region)
    out = mask.copy()
    if box is None:
        return out
    pad = [0] + [1] * (mask.ndim - 1) if per_slice else 1
    box = pad_box(box, pad, mask.shape)
    background = ~region[box]
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    border_axes = range(1, mask.ndim) if per_slice else range(mask.ndim)
    if per_slice:
        structure[0] = False
        structure[-1] = False
    components, n = ndimage.label(background, structure=structure)
    touches_border = np.zeros(n + 1, dtype=bool)
    touches_border[0] = True  # label 0 = the lesion itself
    for axis in border_axes:
        for index in (0, -1):
            face = np.take(components, index, axis=axis)
            touches_border[np.unique(face)] = True
    holes = ~touches_border[components]
    crop = out[box]
    crop[holes & (crop == 0)] = label
    return out


def smooth(
    mask: np.ndarray,
    radius_mm: float,
    spacing: Sequence[float],
    method: SmoothMethod = "median",
    label: int = 1,
) -> np.ndarray:
    """Smooth the boundary of ``label`` with a ball of ``radius_mm`` (anisotropic in voxels).

    The structuring element holds every voxel offset within ``radius_mm`` mm (see
    ``ellipsoid_footprint``), so a 1 mm radius on ``(5, 0.7, 0.7)`` mm voxels acts
    in-plane only. A radius below every spacing changes nothing.

    Methods:
        ``"median"``: majority vote of the binary label under the ball (a voxel is in
            the result iff at least ``n - n//2`` of the ``n`` footprint voxels are),
            identical to ``scipy.ndimage.median_filter(..., mode="nearest")`` on the
            binary label. Removes spikes and fills notches smaller than the ball.
        ``"closing"``: exactly ``shrink(grow(mask, r), r)`` on the label; fills gaps
            and concavities narrower than the ball, never removes.
        ``"opening"``: exactly ``grow(shrink(mask, r), r)``; removes parts thinner
            than the ball, never adds.

    Returns:
        New mask; added voxels get ``label`` only where they were background.
    """
    mask = check_mask(mask)
    spacing = check_spacing(spacing, mask.ndim)
    label = _check_label(label)
    if method not in ("median", "closing", "opening"):
        raise ValueError(f"method must be 'median', 'closing' or 'opening', got {method!r}")
    if radius_mm < 0:
        raise ValueError("radius_mm must be >= 0")
    ball = Ball(radius_mm, spacing)
    if ball.size <= 1:
        return mask.copy()
    region = mask == label

    if method == "median":
        n = ball.size

        def majority(crop: np.ndarray) -> np.ndarray:
            return ball.count(crop) >= n - n // 2

        new, boxes = run_local_operator(region, majority, ball.reach, ball.reach, _BLOCK)
        return write_region(mask, region, new, boxes, label)

    first, second = (_grow_region, _shrink_region)
    if method == "opening":
        first, second = second, first
    middle, boxes1 = first(region, ball)
    new, boxes2 = second(middle, ball)
    return write_region(mask, region, new, boxes1 + boxes2, label)


def _grow_region(region: np.ndarray, ball: Ball) -> tuple[np.ndarray, list[Box]]:
    return run_local_operator(region, ball.dilate, ball.reach, ball.reach, _BLOCK)


def _shrink_region(region: np.ndarray, ball: Ball) -> tuple[np.ndarray, list[Box]]:
    zero = (0,) * region.ndim
    return run_local_operator(region, ball.erode, zero, ball.reach, _BLOCK)


def grow(
    mask: np.ndarray,
    distance_mm: float,
    spacing: Sequence[float],
    label: int = 1,
) -> np.ndarray:
    """Add every background voxel within ``distance_mm`` (Euclidean, in mm) of ``label``.

    Exact: a binary dilation by every voxel offset within ``distance_mm`` (equal to
    thresholding ``distance_transform_edt(sampling=spacing)``), computed on windows
    around the label's boundary. A single voxel grown by 2 mm
    on ``(2, 1, 1)`` mm voxels becomes exactly the voxels with
    ``(2 dz)^2 + dy^2 + dx^2 <= 4``. Voxels of other labels are not overwritten.
    """
    mask = check_mask(mask)
    spacing = check_spacing(spacing, mask.ndim)
    label = _check_label(label)
    if distance_mm < 0:
        raise ValueError("distance_mm must be >= 0; use shrink() to erode")
    ball = Ball(distance_mm, spacing)
    if ball.size <= 1:
        return mask.copy()
    region = mask == label
    new, boxes = _grow_region(region, ball)
    return write_region(mask, region, new, boxes, label)


def shrink(
    mask: np.ndarray,
    distance_mm: float,
    spacing: Sequence[float],
    label: int = 1,
) -> np.ndarray:
    """Remove every ``label`` voxel within ``distance_mm`` (mm) of a non-``label`` voxel.

    The inverse margin of :func:`grow`: a 7x7x7 cube on 1 mm voxels shrunk by 1 mm
    becomes the central 5x5x5 cube, by 2 mm the central 3x3x3 cube. A voxel's
    distance to its face neighbour is one spacing, so ``distance_mm`` smaller than
    the spacing along an axis does not erode along that axis. The image border does
    not count as background.
    """
    mask = check_mask(mask)
    spacing = check_spacing(spacing, mask.ndim)
    label = _check_label(label)
    if distance_mm < 0:
        raise ValueError("distance_mm must be >= 0; use grow() to dilate")
    ball = Ball(distance_mm, spacing)
    if ball.size <= 1:
        return mask.copy()
    region = mask == label
    new, boxes = _shrink_region(region, ball)
    return write_region(mask, region, new, boxes, label)
