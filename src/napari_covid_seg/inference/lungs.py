"""Classical lung mask: HU threshold, outside air removed, largest components, holes filled.

Works in the canonical orientation (axis 0 inferior->superior, axis 1
anterior->posterior, axis 2 patient right->left) so "outside air" means air
connected to the in-plane border of an axial slice, holes are filled per
axial slice, and the right lung is the one at low axis-2 indices.

Steps (at half resolution in-plane for slices wider than ~384 px, which keeps
a 300 x 512 x 512 volume around a second):

1. air = intensity < -320 HU (or the equivalent 0..255 value);
2. remove, per axial slice, air connected to the slice border (outside the body);
3. keep the largest 3D component, and the second largest if it is at least
   ``second_fraction`` of the largest (the lungs, often joined by the trachea);
4. split into right/left: two components by their position along the
   right-left axis, one joined component at the emptiest column near the middle;
5. per lung: a light in-plane closing and per-slice hole filling (vessels,
   lesions enclosed by aerated lung);
6. nearest-neighbour upsampling back to the full grid.

The result is a label array: 0 = outside, 1 = right lung, 2 = left lung.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..io.orientation import from_canonical, to_canonical
from ..io.volume import WINDOWED, Volume
from .preprocess import slice_reorientation

RIGHT_LUNG = 1
LEFT_LUNG = 2
AIR_THRESHOLD_HU = -320.0
#: In-plane structure: 4-neighbours within an axial slice, no link between slices.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def hu_to_intensity(hu: float, intensity: str) -> float:
    """An HU value in the units of an image (HU, or 0..255 lung-windowed)."""
    if intensity == WINDOWED:
        return (hu + 1350.0) * 255.0 / 1500.0
    return hu


def lung_mask(
    volume: Volume,
    *,
    threshold_hu: float = AIR_THRESHOLD_HU,
    second_fraction: float = 0.1,
    closing_mm: float = 3.0,
) -> np.ndarray:
    """Right/left lung labels of a CT Volume, in the source ``(z, y, x)`` order.

    Args:
        volume: CT in HU or lung-windowed 0..255 (``volume.intensity``).
        threshold_hu: voxels below this are air/aerated lung.
        second_fraction: keep a second component if at least this fraction of
            the largest one.
        closing_mm: in-plane closing radius in mm (0 disables).
    Returns:
        uint8 ``(z, y, x)``: 0 outside, :data:`RIGHT_LUNG`, :data:`LEFT_LUNG`.
    """
    r = slice_reorientation(volume)
    canon = to_canonical(volume.data, r)
    spacing_src = volume.spacing
    spacing_canon = tuple(spacing_src[a] for a in r.axes)
    labels = lung_mask_canonical(
        canon,
        spacing=spacing_canon,  # type: ignore[arg-type]
        threshold=hu_to_intensity(threshold_hu, volume.intensity),
        second_fraction=second_fraction,
        closing_mm=closing_mm,
    )
    return np.ascontiguousarray(from_canonical(labels, r))


def lung_mask_canonical(
    canon: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    threshold: float = AIR_THRESHOLD_HU,
    second_fraction: float = 0.1,
    closing_mm: float = 3.0,
) -> np.ndarray:
    """Lung labels of a canonical ``(S, P, L)`` intensity array (same shape, uint8)."""
    n_p, n_l = canon.shape[1:]
    f = max(1, round(min(n_p, n_l) / 256))
    low = canon[:, ::f, ::f]
    air = low < threshold
    candidates = air & ~_border_connected(air)
    del air
    comps, n = ndimage.label(candidates)
    del candidates
    out_low = np.zeros(low.shape, dtype=np.uint8)
    if n == 0:
        return _upsample(out_low, f, canon.shape)
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    keep = [int(order[0])]
    if n > 1 and sizes[order[1]] >= second_fraction * sizes[order[0]]:
        keep.append(int(order[1]))
    sides = _split_sides(comps, keep)
    radius = (
        max(0, round(closing_mm / (spacing[1] * f))) if closing_mm > 0 else 0,
        max(0, round(closing_mm / (spacing[2] * f))) if closing_mm > 0 else 0,
    )
    for label, region in sides:
        _close_and_fill(region, radius)
        out_low[region & (out_low == 0)] = label
    return _upsample(out_low, f, canon.shape)


def _border_connected(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` connected, within their axial slice, to the slice border."""
    lab, n = ndimage.label(mask, structure=_IN_PLANE)
    if n == 0:
        return np.zeros_like(mask)
    border = np.unique(
        np.concatenate(
            [
                lab[:, 0, :].ravel(),
                lab[:, -1, :].ravel(),
                lab[:, :, 0].ravel(),
                lab[:, :, -1].ravel(),
            ]
        )
    )
    hit = np.zeros(n + 1, dtype=bool)
    hit[border] = True
    hit[0] = False
    return hit[lab]


def _split_sides(comps: np.ndarray, keep: list[int]) -> list[tuple[int, np.ndarray]]:
    """``[(RIGHT_LUNG, region), (LEFT_LUNG, region)]`` from the kept components."""
    if len(keep) == 2:
        regions = [comps == k for k in keep]
        centers = [np.nonzero(reg.any(axis=(0, 1)))[0].mean() for reg in regions]
        right, left = (0, 1) if centers[0] <= centers[1] else (1, 0)
        return [(RIGHT_LUNG, regions[right]), (LEFT_LUNG, regions[left])]
    region = comps == keep[0]
    profile = region.sum(axis=(0, 1)).astype(np.float64)  # voxels per right-left column
    cum = np.cumsum(profile) / max(profile.sum(), 1.0)
    lo, hi = int(np.searchsorted(cum, 0.25)), int(np.searchsorted(cum, 0.75))
    if hi - lo < 2:
        # A single small blob (one lung, or a 2D crop): call it by its position.
        center = np.nonzero(profile)[0].mean()
        side = RIGHT_LUNG if center < region.shape[2] / 2 else LEFT_LUNG
        return [(side, region)]
    mid = lo + int(np.argmin(profile[lo : hi + 1]))
    right = region.copy()
    right[:, :, mid:] = False
    region[:, :, :mid] = False
    return [(RIGHT_LUNG, right), (LEFT_LUNG, region)]


def _close_and_fill(region: np.ndarray, radius: tuple[int, int]) -> None:
    """In-place: in-plane closing then per-slice hole filling, inside the bounding box."""
    boxes = ndimage.find_objects(region.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return
    ry, rx = radius
    box = boxes[0]
    sl = (
        box[0],
        slice(max(0, box[1].start - ry - 1), min(region.shape[1], box[1].stop + ry + 1)),
        slice(max(0, box[2].start - rx - 1), min(region.shape[2], box[2].stop + rx + 1)),
    )
    sub = region[sl]
    if ry or rx:
        # Pad so the closing is not clipped by the box edge.
        pad = ((0, 0), (ry + 1, ry + 1), (rx + 1, rx + 1))
        padded = np.pad(sub, pad)
        yy, xx = np.ogrid[-ry : ry + 1, -rx : rx + 1]
        disk = (yy / max(ry, 1)) ** 2 + (xx / max(rx, 1)) ** 2 <= 1.0
        closed = ndimage.binary_closing(padded, structure=disk[None])
        sub = closed[:, ry + 1 : ry + 1 + sub.shape[1], rx + 1 : rx + 1 + sub.shape[2]] | sub
    sub = ~_border_connected(~sub)
    region[sl] = sub


def _upsample(low: np.ndarray, f: int, shape: tuple[int, ...]) -> np.ndarray:
    if f == 1:
        return low
    up = np.repeat(np.repeat(low, f, axis=1), f, axis=2)
    return np.ascontiguousarray(up[:, : shape[1], : shape[2]])


def lung_volumes_ml(lungs: np.ndarray, voxel_volume_ml: float) -> tuple[float, float]:
    """(right, left) lung volumes in mL of a label array."""
    counts = np.bincount(lungs.ravel(), minlength=3)
    return float(counts[RIGHT_LUNG] * voxel_volume_ml), float(counts[LEFT_LUNG] * voxel_volume_ml)
