"""Fill between axial slices by shape-based interpolation.

The user draws a lesion on a few key slices; the slices in between are filled
from signed distance maps of the two nearest key slices (Raya & Udupa 1990):
``d_t = (1 - t) * d_z0 + t * d_z1``, inside where ``d_t < 0`` (``t`` in (0, 1)).

Refinements that keep several lesions per slice apart and let a lesion move:

* the lesions (8-connected 2D components) of the two key slices are matched:
  lesions that overlap belong together (splits and merges included); a leftover
  pair that are each other's nearest lesion, with centres closer than twice the sum
  of their equivalent radii, is matched too;
* each matched group is blended after aligning the centroids: both distance maps
  are shifted so that their centroids sit at the interpolated centroid. Two discs
  of radius ``r0`` and ``r1`` thus give in-between discs of radius
  ``(1 - t) r0 + t r1`` whose centres move linearly, even when the discs do not
  overlap;
* a lesion without a partner on the other key slice shrinks towards its medial
  points and is gone halfway between the key slices.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ._common import CorrectionError, bounding_box, check_mask, pad_box, union_box

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _signed_distance(region: np.ndarray, sampling: Sequence[float]) -> np.ndarray:
    """2D signed distance in mm: negative inside, positive outside, boundary at 0.

    Inside voxels get ``-distance to the nearest outside voxel``, outside voxels
    ``+distance to the nearest inside voxel``. ``region`` must hold both values.
    """
    outside = ndimage.distance_transform_edt(~region, sampling=sampling)
    inside = ndimage.distance_transform_edt(region, sampling=sampling)
    return outside - inside


def annotated_slices(mask: np.ndarray, label: int = 1) -> np.ndarray:
    """Sorted indices of axial slices (axis 0) holding at least one ``label`` voxel."""
    mask = check_mask(mask)
    return np.flatnonzero((mask == label).any(axis=tuple(range(1, mask.ndim))))


def _match_lesions(
    labels0: np.ndarray, n0: int, labels1: np.ndarray, n1: int, sampling: Sequence[float]
) -> list[tuple[list[int], list[int]]]:
    """Groups ``(ids in slice 0, ids in slice 1)``; a side may be empty (unmatched)."""
    both = (labels0 > 0) & (labels1 > 0)
    rows = labels0[both] - 1
    cols = labels1[both] - 1 + n0
    graph = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n0 + n1, n0 + n1))
    n_groups, group_of = connected_components(graph, directed=False)
    groups: dict[int, tuple[list[int], list[int]]] = {g: ([], []) for g in range(n_groups)}
    for node, g in enumerate(group_of):
        if node < n0:
            groups[g][0].append(node + 1)
        else:
            groups[g][1].append(node - n0 + 1)
    matched = [ids for ids in groups.values() if ids[0] and ids[1]]
    lonely0 = [ids[0][0] for ids in groups.values() if not ids[1]]
    lonely1 = [ids[1][0] for ids in groups.values() if not ids[0]]
    if lonely0 and lonely1:
        scale = np.asarray(sampling, dtype=np.float64)
        pixel_area = float(np.prod(scale))

        def describe(labels: np.ndarray, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
            ones = np.ones(labels.shape)
            centres = np.array(ndimage.center_of_mass(ones, labels, ids)) * scale
            areas = np.asarray(ndimage.sum_labels(ones, labels, ids)) * pixel_area
            return centres, np.sqrt(areas / np.pi)

        c0, r0 = describe(labels0, lonely0)
        c1, r1 = describe(labels1, lonely1)
        distance = np.linalg.norm(c0[:, None, :] - c1[None, :, :], axis=-1)
        near1 = distance.argmin(axis=1)
        near0 = distance.argmin(axis=0)
        paired0, paired1 = set(), set()
        for i, j in enumerate(near1):
            if near0[j] == i and distance[i, j] <= 2.0 * (r0[i] + r1[j]):
                matched.append(([lonely0[i]], [lonely1[j]]))
                paired0.add(i)
                paired1.add(int(j))
        lonely0 = [v for i, v in enumerate(lonely0) if i not in paired0]
        lonely1 = [v for j, v in enumerate(lonely1) if j not in paired1]
    return matched + [([v], []) for v in lonely0] + [([], [v]) for v in lonely1]


def _centroid(region: np.ndarray) -> np.ndarray:
    return np.array([c.mean() for c in np.nonzero(region)])


def interpolate_slices(
    key0: np.ndarray,
    key1: np.ndarray,
    fractions: Sequence[float],
    spacing_yx: Sequence[float] = (1.0, 1.0),
) -> list[np.ndarray]:
    """Interpolated 2D shapes between two boolean key slices, one per fraction ``t``.

    Args:
        key0, key1: boolean ``(y, x)`` shapes at ``t = 0`` and ``t = 1`` (non-empty).
        fractions: positions ``t`` in (0, 1).
        spacing_yx: in-plane pixel size in mm.

    Returns:
        Boolean ``(y, x)`` arrays, one per fraction (see the module docstring).
    """
    sampling = tuple(float(s) for s in spacing_yx)
    out = [np.zeros(key0.shape, dtype=bool) for _ in fractions]
    labels0, n0 = ndimage.label(key0, structure=_EIGHT_CONNECTED)
    labels1, n1 = ndimage.label(key1, structure=_EIGHT_CONNECTED)
    for ids0, ids1 in _match_lesions(labels0, n0, labels1, n1, sampling):
        part0 = np.isin(labels0, ids0) if ids0 else None
        part1 = np.isin(labels1, ids1) if ids1 else None
        if part0 is not None and part1 is not None:
            move = _centroid(part1) - _centroid(part0)
        else:
            move = np.zeros(key0.ndim)
        tight = union_box(
            None if part0 is None else bounding_box(part0),
            None if part1 is None else bounding_box(part1),
        )
        box = pad_box(tight, [int(np.ceil(abs(m))) + 1 for m in move], key0.shape)
        inner = (slice(1, -1),) * key0.ndim
        # One more background pixel so that a shape filling the crop has an outside.
        d0 = None if part0 is None else _signed_distance(np.pad(part0[box], 1), sampling)
        d1 = None if part1 is None else _signed_distance(np.pad(part1[box], 1), sampling)
        for plane, t in zip(out, fractions, strict=True):
            if d0 is not None and d1 is not None:
                a = ndimage.shift(d0, t * move, order=1, mode="nearest") if move.any() else d0
                b = ndimage.shift(d1, (t - 1) * move, order=1, mode="nearest") if move.any() else d1
                inside = (1.0 - t) * a + t * b < 0
            elif d0 is not None:  # no partner: gone halfway
                inside = d0 + 2.0 * t * max(-d0.min(), 0.0) < 0
            else:
                inside = d1 + 2.0 * (1.0 - t) * max(-d1.min(), 0.0) < 0
            plane[box] |= inside[inner]
    return out


def _fill_inplace(
    out: np.ndarray, region: np.ndarray, label: int, sampling: Sequence[float]
) -> None:
    """Fill ``out[1:-1]`` from key slices ``region[0]`` and ``region[-1]``."""
    last = region.shape[0] - 1
    fractions = [z / last for z in range(1, last)]
    shapes = interpolate_slices(region[0], region[last], fractions, sampling)
    for z, inside in enumerate(shapes, start=1):
        plane = out[z]
        plane[plane == label] = 0
        plane[inside & (plane == 0)] = label


def _sampling(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * (ndim - 1)
    values = tuple(float(s) for s in spacing)
    if len(values) == ndim:
        values = values[1:]
    if len(values) != ndim - 1 or not all(s > 0 for s in values):
        raise ValueError("spacing must be (z, y, x) or in-plane (y, x) voxel sizes in mm")
    return values


def interpolate_between_slices(
    mask: np.ndarray,
    z0: int,
    z1: int,
    label: int = 1,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Fill axial slices strictly between key slices ``z0`` and ``z1`` (order free).

    Args:
        mask: label mask ``(z, y, x)``.
        z0, z1: key slice indices; both must hold ``label`` voxels.
        label: the label to interpolate.
        spacing: optional voxel size in mm, ``(z, y, x)`` or ``(y, x)``; only the
            in-plane sizes matter (for distances in non-square pixels).

    Returns:
        New mask. In each in-between slice, ``label`` voxels are replaced by the
        interpolated shape (written over background only); key slices and other
        labels are unchanged.

    Raises:
        CorrectionError: a key slice holds no ``label`` voxels.
    """
    mask = check_mask(mask)
    z0, z1 = sorted((int(z0), int(z1)))
    if z0 < 0 or z1 >= mask.shape[0]:
        raise ValueError(f"key slices must be in 0..{mask.shape[0] - 1}, got {z0} and {z1}")
    out = mask.copy()
    if z1 - z0 < 2:
        return out
    region = mask[z0 : z1 + 1] == label
    if not region[0].any() or not region[-1].any():
        empty = z0 if not region[0].any() else z1
        raise CorrectionError(
            f"axial slice {empty} has no voxels of label {label}; draw the lesion on both "
            "key slices before filling between them"
        )
    _fill_inplace(out[z0 : z1 + 1], region, label, _sampling(spacing, mask.ndim))
    return out


def interpolate_all_gaps(
    mask: np.ndarray,
    label: int = 1,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Fill every run of empty axial slices between two consecutive annotated slices.

    Slices with ``label`` voxels are key slices and stay unchanged; each gap between
    two consecutive key slices is filled as in :func:`interpolate_between_slices`.
    Slices before the first and after the last key slice are left alone.
    """
    mask = check_mask(mask)
    keys = annotated_slices(mask, label)
    out = mask.copy()
    sampling = _sampling(spacing, mask.ndim)
    for z0, z1 in itertools.pairwise(keys):
        if z1 - z0 < 2:
            continue
        _fill_inplace(out[z0 : z1 + 1], mask[z0 : z1 + 1] == label, label, sampling)
    return out


def interpolate_lesion(
    mask: np.ndarray,
    key_slices: Sequence[int],
    lesion: np.ndarray,
    label: int = 1,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Fill one lesion between chosen key slices, leaving every other voxel alone.

    Unlike :func:`interpolate_all_gaps` (every gap of the whole label), only the
    slices strictly between consecutive ``key_slices`` change, and only where the
    lesion is: there the lesion's voxels are replaced by the shape interpolated
    from its shapes on the two key slices around (written over background only).
    Other lesions of the same label, slices outside the key range and the key
    slices themselves are unchanged.

    Args:
        mask: label mask ``(z, y, x)``.
        key_slices: two or more axial indices (e.g. the slices the user drew on).
        lesion: boolean ``(z, y, x)``: the voxels that make up the lesion (e.g. its
            connected component); its ``label`` voxels on a key slice are that
            slice's shape.
        label: the label to interpolate.
        spacing: voxel size in mm, ``(z, y, x)`` or ``(y, x)``.

    Raises:
        CorrectionError: fewer than two key slices, or a key slice without lesion voxels.
    """
    mask = check_mask(mask)
    lesion = np.asarray(lesion, dtype=bool)
    if lesion.shape != mask.shape:
        raise ValueError(f"lesion {lesion.shape} and mask {mask.shape} differ in shape")
    keys = sorted({int(z) for z in key_slices})
    if len(keys) < 2:
        raise CorrectionError(
            "fill between slices needs the lesion on at least two axial slices "
            f"(got {keys or 'none'})"
        )
    if keys[0] < 0 or keys[-1] >= mask.shape[0]:
        raise ValueError(f"key slices must be in 0..{mask.shape[0] - 1}, got {keys}")
    shape = lesion & (mask == label)
    empty = [z for z in keys if not shape[z].any()]
    if empty:
        raise CorrectionError(
            f"axial slice {empty[0]} has no voxels of this lesion; draw it there first "
            "or choose other slices"
        )
    out = mask.copy()
    sampling = _sampling(spacing, mask.ndim)
    for z0, z1 in itertools.pairwise(keys):
        if z1 - z0 < 2:
            continue
        fractions = [(z - z0) / (z1 - z0) for z in range(z0 + 1, z1)]
        planes = interpolate_slices(shape[z0], shape[z1], fractions, sampling)
        for z, inside in zip(range(z0 + 1, z1), planes, strict=True):
            plane = out[z]
            plane[lesion[z] & (plane == label)] = 0
            plane[inside & (plane == 0)] = label
    return out
