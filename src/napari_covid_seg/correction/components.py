"""Connected lesions: label them, list them with volumes, delete or keep some.

Typical widget use::

    comps = label_components(mask, connectivity=1)
    lesions = list_lesions(mask, spacing, components=comps)   # largest first
    mask = delete_component(mask, comps, lesions[3].index)

The component labels are kept on the bounding box of the foreground only
(:class:`Components`), so labelling a 300x512x512 mask does not allocate a
full-volume int32 array.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import GeometryMismatchError
from ._common import Box, bounding_box, check_mask, check_spacing


@dataclass(frozen=True)
class Components:
    """Connected components of a mask's foreground.

    Attributes:
        labels: int32 component ids (1..n, 0 = not foreground) over ``box``.
        box: where ``labels`` sits in the mask (one slice per axis).
        n: number of components.
        shape: shape of the full mask.
    """

    labels: np.ndarray
    box: Box
    n: int
    shape: tuple[int, ...]

    def to_full(self, dtype: np.dtype | type = np.int32) -> np.ndarray:
        """Full-size component id array of ``shape`` (e.g. for a napari Labels layer)."""
        out = np.zeros(self.shape, dtype=dtype)
        out[self.box] = self.labels
        return out


@dataclass(frozen=True)
class Lesion:
    """One connected lesion.

    Attributes:
        index: component id in the :class:`Components` it came from (pass it to
            :func:`delete_component` / :func:`keep_only`).
        volume_ml: volume in millilitres (1 mL = 1000 mm^3).
        n_voxels: number of voxels.
        z_range: first and last axial slice holding it (inclusive).
        centroid_zyx: mean voxel index ``(z, y, x)`` (index space, not mm).
        bbox: ``(slice_z, slice_y, slice_x)`` in the mask's index space.
    """

    index: int
    volume_ml: float
    n_voxels: int
    z_range: tuple[int, int]
    centroid_zyx: tuple[float, ...]
    bbox: Box


def label_components(
    mask: np.ndarray, label: int | None = None, connectivity: int = 1
) -> Components:
    """Label 3D connected components of ``mask == label`` (or of ``mask != 0`` if None).

    Args:
        connectivity: 1 = faces (6-neighbourhood in 3D), 2 = + edges, 3 = + corners.
    """
    mask = check_mask(mask)
    if not 1 <= int(connectivity) <= mask.ndim:
        raise ValueError(f"connectivity must be 1..{mask.ndim}")
    region = mask != 0 if label is None else mask == label
    box = bounding_box(region)
    if box is None:
        empty_box = tuple(slice(0, 0) for _ in mask.shape)
        return Components(np.zeros((0,) * mask.ndim, np.int32), empty_box, 0, mask.shape)
    structure = ndimage.generate_binary_structure(mask.ndim, int(connectivity))
    crop = np.ascontiguousarray(region[box])  # labelling a strided view is ~3x slower
    labels = np.zeros(crop.shape, dtype=np.int32)
    n = ndimage.label(crop, structure=structure, output=labels)
    return Components(labels, box, int(n), tuple(mask.shape))


def list_lesions(
    mask: np.ndarray,
    spacing: Sequence[float],
    label: int | None = None,
    connectivity: int = 1,
    components: Components | None = None,
) -> list[Lesion]:
    """List connected lesions, largest volume first (ties: lower index first).

    Args:
        mask: label mask ``(z, y, x)``.
        spacing: voxel size in mm ``(z, y, x)``.
        label, connectivity: as in :func:`label_components` (ignored if ``components``
            is given).
        components: reuse an existing labelling of this mask.
    """
    mask = check_mask(mask)
    spacing = check_spacing(spacing, mask.ndim)
    comps = components if components is not None else label_components(mask, label, connectivity)
    _check_components_shape(mask, comps)
    if comps.n == 0:
        return []
    voxel_ml = float(np.prod(spacing)) / 1000.0
    offsets = [s.start for s in comps.box]
    lesions = []
    for index, local in enumerate(ndimage.find_objects(comps.labels), start=1):
        if local is None:
            continue
        inside = comps.labels[local] == index
        n_voxels = int(inside.sum())
        centroid = []
        for axis in range(inside.ndim):
            rest = tuple(a for a in range(inside.ndim) if a != axis)
            profile = inside.sum(axis=rest)
            position = np.arange(profile.size) + local[axis].start + offsets[axis]
            centroid.append(float(profile @ position) / n_voxels)
        bbox = tuple(slice(s.start + o, s.stop + o) for s, o in zip(local, offsets, strict=True))
        lesions.append(
            Lesion(
                index=index,
                volume_ml=n_voxels * voxel_ml,
                n_voxels=n_voxels,
                z_range=(bbox[0].start, bbox[0].stop - 1),
                centroid_zyx=tuple(centroid),
                bbox=bbox,
            )
        )
    lesions.sort(key=lambda lesion: (-lesion.n_voxels, lesion.index))
    return lesions


def _selected(components: Components | np.ndarray, indices: int | Iterable[int]):
    """(box, boolean selection over box) for the chosen component ids."""
    ids = np.atleast_1d(np.asarray(list(indices) if not np.isscalar(indices) else indices))
    if isinstance(components, Components):
        labels, box, n = components.labels, components.box, components.n
    else:
        labels = np.asarray(components)
        box = tuple(slice(0, s) for s in labels.shape)
        n = int(labels.max(initial=0))
    lookup = np.zeros(max(n, int(ids.max(initial=0))) + 1, dtype=bool)
    lookup[ids[ids > 0].astype(np.intp)] = True
    return box, lookup[labels]


def _check_components_shape(mask: np.ndarray, components: Components | np.ndarray) -> None:
    shape = components.shape if isinstance(components, Components) else np.shape(components)
    if tuple(shape) != mask.shape:
        raise GeometryMismatchError(
            f"components were computed on a {tuple(shape)} mask, not this {mask.shape} one; "
            "label the components of the current mask again"
        )


def delete_component(
    mask: np.ndarray,
    components: Components | np.ndarray,
    index: int | Iterable[int],
) -> np.ndarray:
    """Return a copy of ``mask`` with the voxels of component(s) ``index`` set to 0.

    ``components`` is a :class:`Components` or a full-size component id array.
    """
    mask = check_mask(mask)
    _check_components_shape(mask, components)
    box, selected = _selected(components, index)
    out = mask.copy()
    out[box][selected] = 0
    return out


def keep_only(
    mask: np.ndarray,
    components: Components | np.ndarray,
    indices: int | Iterable[int],
) -> np.ndarray:
    """Return a copy of ``mask`` where every component except ``indices`` is set to 0.

    Voxels outside all components (e.g. other labels when the components were made
    for one label) are left alone.
    """
    mask = check_mask(mask)
    _check_components_shape(mask, components)
    box, selected = _selected(components, indices)
    labels = components.labels if isinstance(components, Components) else np.asarray(components)
    out = mask.copy()
    out[box][(labels > 0) & ~selected] = 0
    return out
