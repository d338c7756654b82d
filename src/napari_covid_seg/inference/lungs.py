"""Classical lung mask for the CT users have: full field of view, tight crops, partial coverage.

Works on the canonical array (axis 0 inferior->superior, axis 1
anterior->posterior, axis 2 patient right->left): the caller reorients once
(:func:`lung_mask` does it for a Volume) and every step here takes that array.

Steps, at half resolution in-plane for slices wider than ~384 px (a
300 x 512 x 512 volume takes well under a second):

1. air = intensity < -320 HU (or the equivalent 0..255 value);
2. **outside air**, per axial slice: a slice whose border-connected air runs
   along more than 40 % of its border shows the whole body (a scanner's field
   of view); that air is outside, and so is border-connected air lying mostly
   outside the body's convex hull (the gap above the table, between arms and
   chest). Other slices are crops (public COVID slices): a lung cut by the
   crop touches the border too, so only air outside the hull of all tissue
   (the crop's corners) is outside there;
3. the remaining air in 3D components; gas-like components (median below
   -950 HU, 100 HU darker than the lung-like ones and below them: bowel and
   stomach gas) are dropped on HU data; the largest component and the second largest (if
   at least ``second_fraction`` of it) are the lungs;
4. right/left split: two components by position, one joined component at the
   emptiest column near the middle;
5. per lung and axial slice: a light closing and hole filling (vessels,
   lesions enclosed by aerated lung). Dense consolidation at the lung edge is
   not enclosed; :func:`lung_envelope` (the per-slice convex hull of each
   lung) covers it for the lung restriction, so disease is never carved out.

:func:`check_lungs` says whether a mask is plausible (area, volume, sides);
the engine skips the lung restriction, and says why, when it is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..io.orientation import from_canonical, to_canonical
from ..io.volume import WINDOWED, Volume
from .preprocess import slice_reorientation

RIGHT_LUNG = 1
LEFT_LUNG = 2
AIR_THRESHOLD_HU = -320.0
#: Air components with a median below this are gas (bowel, stomach), not lung (HU data only).
GAS_MEDIAN_HU = -950.0
#: Border-connected air touching more than this fraction of the slice border is outside air.
OUTSIDE_CONTACT = 0.4
#: In-plane structure: 4-neighbours within an axial slice, no link between slices.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def hu_to_intensity(hu: float, intensity: str) -> float:
    """An HU value in the units of an image (HU, or 0..255 lung-windowed)."""
    if intensity == WINDOWED:
        return (hu + 1350.0) * 255.0 / 1500.0
    return hu


@dataclass
class LungCheck:
    """Whether a lung mask is plausible enough to restrict predictions with.

    Attributes:
        plausible: False when the mask looks wrong; the restriction is then skipped.
        reason: why it is implausible (empty when plausible).
        right_ml, left_ml: lung volumes in mL.
        notes: softer remarks (partial coverage, one lung only).
    """

    plausible: bool
    reason: str = ""
    right_ml: float = 0.0
    left_ml: float = 0.0
    notes: list[str] = field(default_factory=list)


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
    spacing_canon = tuple(volume.spacing[a] for a in r.axes)
    labels = lung_mask_canonical(
        canon,
        spacing=spacing_canon,  # type: ignore[arg-type]
        threshold=air_threshold(canon, volume.intensity, threshold_hu),
        gas_median=None if volume.intensity == WINDOWED else GAS_MEDIAN_HU,
        second_fraction=second_fraction,
        closing_mm=closing_mm,
    )
    return np.ascontiguousarray(from_canonical(labels, r))


def air_threshold(
    canon: np.ndarray, intensity: str, threshold_hu: float = AIR_THRESHOLD_HU
) -> float:
    """The air/tissue cut in the array's units.

    HU: ``threshold_hu``. Images already windowed to 0..255 come with
    windows of their own (public sets differ: tissue at 90 in one, 220 in
    another), so there the cut is Otsu's threshold of the image, kept
    between the values of -1000 and -100 HU in the lung window.
    """
    if intensity != WINDOWED:
        return threshold_hu
    from skimage.filters import threshold_otsu

    step = max(1, canon.size // 2_000_000)
    sample = np.asarray(canon).ravel()[::step]
    if sample.size == 0 or sample.min() == sample.max():
        return hu_to_intensity(threshold_hu, intensity)
    t = float(threshold_otsu(sample.astype(np.float32)))
    return float(
        np.clip(t, hu_to_intensity(-1000.0, intensity), hu_to_intensity(-100.0, intensity))
    )


def lung_mask_canonical(
    canon: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    threshold: float = AIR_THRESHOLD_HU,
    gas_median: float | None = GAS_MEDIAN_HU,
    second_fraction: float = 0.1,
    closing_mm: float = 3.0,
) -> np.ndarray:
    """Lung labels of a canonical ``(S, P, L)`` intensity array (same shape, uint8).

    Args:
        canon: ``(S, P, L)`` intensities (HU, or 0..255 with ``threshold`` and
            ``gas_median`` given in those units / None).
        spacing: ``(S, P, L)`` voxel size in mm.
        threshold: air threshold in the array's units.
        gas_median: components whose median is below this are gas, not lung
            (None: no gas test, e.g. for 0..255 images).
    """
    n_p, n_l = canon.shape[1:]
    f = max(1, round(min(n_p, n_l) / 256))
    low = canon[:, ::f, ::f]
    air = low < threshold
    candidates = air & ~outside_air(air)
    del air
    comps, n = ndimage.label(candidates)
    del candidates
    out_low = np.zeros(low.shape, dtype=np.uint8)
    if n == 0:
        return _upsample(out_low, f, canon.shape)
    sizes = np.bincount(comps.ravel()).astype(np.float64)
    sizes[0] = 0
    if gas_median is not None:
        _drop_gas(comps, sizes, low, gas_median)
    order = np.argsort(sizes)[::-1]
    if sizes[order[0]] == 0:
        return _upsample(out_low, f, canon.shape)
    keep = [int(order[0])]
    if n > 1 and sizes[order[1]] > 0 and sizes[order[1]] >= second_fraction * sizes[order[0]]:
        keep.append(int(order[1]))
    sides = _split_sides(comps, keep, _body_midline(low >= threshold))
    radius = (
        max(0, round(closing_mm / (spacing[1] * f))) if closing_mm > 0 else 0,
        max(0, round(closing_mm / (spacing[2] * f))) if closing_mm > 0 else 0,
    )
    for label, region in sides:
        _close_and_fill(region, radius)
        out_low[region & (out_low == 0)] = label
    return _upsample(out_low, f, canon.shape)


def outside_air(air: np.ndarray) -> np.ndarray:
    """Air outside the body, per axial slice of a canonical ``(S, P, L)`` bool array.

    A slice with an air region touching more than :data:`OUTSIDE_CONTACT` of
    its border shows the whole body (a scanner's field of view): that region
    is outside, and so is any other border-connected air lying mostly outside
    the convex hull of the body (its largest tissue region plus any at least a
    quarter of its size, so table, arms and clothing do not widen it). A slice
    without such a region is a crop: there, border-connected air is outside
    only when it lies mostly outside the convex hull of all tissue (corners);
    lungs cut by the crop stay.
    """
    lab, n = ndimage.label(air, structure=_IN_PLANE)
    if n == 0:
        return np.zeros_like(air)
    n_s, h, w = air.shape
    border = np.concatenate(
        [
            lab[:, 0, :].ravel(),
            lab[:, -1, :].ravel(),
            lab[:, 1:-1, 0].ravel(),
            lab[:, 1:-1, -1].ravel(),
        ]
    )
    contact = np.bincount(border, minlength=n + 1).astype(np.float64)
    contact[0] = 0.0
    touching = contact > 0
    if not touching.any():
        return np.zeros_like(air)
    perimeter = max(2 * (h + w) - 4, 1)
    wide = contact / perimeter > OUTSIDE_CONTACT
    slice_of = _slice_of_labels(lab, n)
    full_view = np.zeros(n_s, dtype=bool)
    full_view[slice_of[wide]] = True
    # The hull only decides for border-connected air that is not obviously outside.
    undecided = np.zeros(n_s, dtype=bool)
    undecided[slice_of[touching & ~wide]] = True
    hull, g = _body_hull(~air, full_view, undecided)
    # Fractions on the hull's coarse grid: enough to tell corners from lungs.
    lab_g = lab[:, ::g, ::g]
    area = np.bincount(lab_g.ravel(), minlength=n + 1).astype(np.float64)
    outside_area = np.bincount(lab_g[~hull], minlength=n + 1).astype(np.float64)
    is_out = touching & (wide | (outside_area > 0.5 * area))
    is_out[0] = False
    return is_out[lab]


def _slice_of_labels(lab: np.ndarray, n: int) -> np.ndarray:
    """Axial slice index of each in-plane label ``0..n`` (label 0 -> 0).

    ``ndimage.label`` numbers regions in scan order and in-plane regions never
    span slices, so slice ``i`` holds the labels up to its maximum.
    """
    top = np.maximum.accumulate(lab.reshape(lab.shape[0], -1).max(axis=1))
    slice_of = np.searchsorted(top, np.arange(n + 1), side="left")
    slice_of[0] = 0
    return slice_of


def _body_hull(
    tissue: np.ndarray, full_view: np.ndarray, needed: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Convex hull of the body per axial slice (see :func:`outside_air`).

    Returns ``(hull, g)``: bool ``tissue[:, ::g, ::g]``-shaped hull, on a grid
    at most ~96 px a side (a hull only decides which air regions are outside).

    ``full_view[i]``: slice ``i`` shows the whole body (hull of the main
    tissue regions only); otherwise the hull of all tissue. ``needed[i]``
    False: slice ``i`` is left empty.
    """
    n_s, h, w = tissue.shape
    g = max(1, -(-max(h, w) // 96))
    small = tissue[:, ::g, ::g]
    lab, n = ndimage.label(small, structure=_IN_PLANE)
    if n == 0:
        return np.zeros_like(small), g
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    slice_of = _slice_of_labels(lab, n)
    largest = np.zeros(n_s, dtype=np.int64)
    np.maximum.at(largest, slice_of[1:], sizes[1:])
    share = np.where(full_view[slice_of], 0.25, 0.01)
    keep = sizes >= share * largest[slice_of]
    keep[0] = False
    body = keep[lab]
    hull_small = np.zeros_like(body)
    for i in range(n_s) if needed is None else np.flatnonzero(needed):
        hull_small[i] = filled_convex_hull(body[i])
    return hull_small | small, g


def filled_convex_hull(region: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie in the convex hull of a 2D bool region's pixel centres.

    About 20x faster than ``skimage.morphology.convex_hull_image`` on a 96 px
    grid (only each row's outermost pixels are hull candidates; the polygon is
    filled row by row as one interval), which keeps the body hull of 300
    slices well under the lung mask's one-second budget. Tiny or collinear
    regions are returned as they are.
    """
    region = np.asarray(region, dtype=bool)
    rows = np.flatnonzero(region.any(axis=1))
    if len(rows) == 0:
        return region.copy()
    sub = region[rows]
    left = sub.argmax(axis=1)
    right = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    pts = np.unique(
        np.concatenate([np.stack([rows, left], 1), np.stack([rows, right], 1)]), axis=0
    ).astype(np.float64)
    if len(pts) < 3:
        return region.copy()
    hull = _monotone_chain(pts)
    if len(hull) < 3:
        return region.copy()
    out = np.zeros_like(region)
    # Each row y crosses the convex polygon in one interval [min x, max x] over its edges.
    a, b = hull, np.roll(hull, -1, axis=0)
    ys = np.arange(int(rows[0]), int(rows[-1]) + 1, dtype=np.float64)
    y0, y1 = a[:, 0:1], b[:, 0:1]
    lo_y, hi_y = np.minimum(y0, y1), np.maximum(y0, y1)
    spans = (ys[None] >= lo_y - 1e-9) & (ys[None] <= hi_y + 1e-9)
    dy = np.where(y1 - y0 == 0, 1.0, y1 - y0)
    t = np.clip((ys[None] - y0) / dy, 0.0, 1.0)
    x = a[:, 1:2] + t * (b[:, 1:2] - a[:, 1:2])
    flat = (y1 - y0) == 0  # horizontal edges: both end points count
    x_lo = np.where(flat, np.minimum(a[:, 1:2], b[:, 1:2]), x)
    x_hi = np.where(flat, np.maximum(a[:, 1:2], b[:, 1:2]), x)
    lo = np.where(spans, x_lo, np.inf).min(axis=0)
    hi = np.where(spans, x_hi, -np.inf).max(axis=0)
    ok = np.isfinite(lo) & np.isfinite(hi)
    cols = np.arange(region.shape[1])
    fill = (cols[None] >= np.ceil(lo[:, None] - 1e-6)) & (
        cols[None] <= np.floor(hi[:, None] + 1e-6)
    )
    out[int(rows[0]) : int(rows[-1]) + 1] = fill & ok[:, None]
    return out | region


def _monotone_chain(pts: np.ndarray) -> np.ndarray:
    """Convex hull vertices (counter-clockwise) of ``(N, 2)`` points sorted by (row, col)."""

    def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))

    lower: list[np.ndarray] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[np.ndarray] = []
    for p in pts[::-1]:
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def _body_midline(tissue: np.ndarray) -> float | None:
    """Centre of the body's right-left extent (canonical axis 2), or None without tissue."""
    cols = np.flatnonzero(tissue.any(axis=(0, 1)))
    if len(cols) == 0:
        return None
    return (cols[0] + cols[-1] + 1) / 2.0


def _drop_gas(comps: np.ndarray, sizes: np.ndarray, low: np.ndarray, gas_median: float) -> None:
    """Zero the size of gas-like components (bowel, stomach), in place.

    A component is gas when its median is below ``gas_median``, at least
    100 HU below the darkest sizeable lung-like component, and centred below
    that component's lowest slice (bowel and stomach lie under the lungs; a
    healthy lung beside a diseased one is never dropped). When no component
    looks like lung (e.g. slices converted from 0..255 images, whose "HU" put
    aerated lung near -1100), nothing is dropped.
    """
    big = np.flatnonzero(sizes >= max(sizes.max() * 0.02, 1))
    if len(big) < 2:
        return
    objs = ndimage.find_objects(comps)
    medians, centre_s, lowest_s = {}, {}, {}
    for k in big:
        sl = objs[k - 1]
        if sl is not None:
            inside = comps[sl] == k
            medians[int(k)] = float(np.median(low[sl][inside]))
            per_slice = inside.sum(axis=(1, 2))
            centre_s[int(k)] = sl[0].start + float(
                np.average(np.arange(len(per_slice)), weights=per_slice)
            )
            lowest_s[int(k)] = sl[0].start
    sizeable = [k for k in medians if sizes[k] >= 0.05 * sizes.max()]
    lung_like = [k for k in sizeable if medians[k] >= gas_median]
    if not lung_like:
        return
    ref = min(medians[k] for k in lung_like)
    bottom = min(lowest_s[k] for k in lung_like)
    for k, med in medians.items():
        # Gas: darker than lung, and (bowel, stomach) centred below the lungs' lowest slice.
        if med < gas_median and med < ref - 100.0 and centre_s[k] < bottom:
            sizes[k] = 0


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


def _split_sides(
    comps: np.ndarray, keep: list[int], midline: float | None = None
) -> list[tuple[int, np.ndarray]]:
    """``[(RIGHT_LUNG, region), (LEFT_LUNG, region)]`` from the kept components.

    ``midline``: the body's centre along the right-left axis (canonical axis 2);
    defaults to the image centre.
    """
    mid_l = comps.shape[2] / 2 if midline is None else midline
    if len(keep) == 2:
        regions = [comps == k for k in keep]
        centers = [np.nonzero(reg.any(axis=(0, 1)))[0].mean() for reg in regions]
        if (centers[0] - mid_l) * (centers[1] - mid_l) > 0 and _is_one_side(regions, mid_l):
            # Both on one side of the body (one lung cut in two): one lung.
            merged = regions[0] | regions[1]
            side = RIGHT_LUNG if np.mean(centers) < mid_l else LEFT_LUNG
            return [(side, merged)]
        right, left = (0, 1) if centers[0] <= centers[1] else (1, 0)
        return [(RIGHT_LUNG, regions[right]), (LEFT_LUNG, regions[left])]
    region = comps == keep[0]
    profile = region.sum(axis=(0, 1)).astype(np.float64)  # voxels per right-left column
    total = max(profile.sum(), 1.0)
    cut = int(np.clip(round(mid_l), 0, len(profile)))
    right_share = profile[:cut].sum() / total
    if min(right_share, 1.0 - right_share) < 0.15:
        # One lung (or a crop showing one): call it by its side of the body.
        return [(RIGHT_LUNG if right_share >= 0.5 else LEFT_LUNG, region)]
    cum = np.cumsum(profile) / total
    lo, hi = int(np.searchsorted(cum, 0.25)), int(np.searchsorted(cum, 0.75))
    mid = lo + int(np.argmin(profile[lo : hi + 1])) if hi - lo >= 2 else cut
    right = region.copy()
    right[:, :, mid:] = False
    region[:, :, :mid] = False
    return [(RIGHT_LUNG, right), (LEFT_LUNG, region)]


def _is_one_side(regions: list[np.ndarray], mid_l: float) -> bool:
    """True when every region lies (90 % of its voxels) on the same side of ``mid_l``."""
    sides = []
    for reg in regions:
        profile = reg.sum(axis=(0, 1)).astype(np.float64)
        cut = int(np.clip(round(mid_l), 0, len(profile)))
        share = profile[:cut].sum() / max(profile.sum(), 1.0)
        if 0.1 < share < 0.9:
            return False
        sides.append(share >= 0.5)
    return len(set(sides)) == 1


def _close_and_fill(region: np.ndarray, radius: tuple[int, int]) -> None:
    """In-place: in-plane closing then per-slice hole filling, inside the bounding box."""
    zy = region.any(axis=2)
    zs, ys, xs = (np.flatnonzero(zy.any(1)), np.flatnonzero(zy.any(0)),
                  np.flatnonzero(region.any(axis=(0, 1))))  # fmt: skip
    if len(zs) == 0:
        return
    ry, rx = radius
    box = tuple(slice(int(v[0]), int(v[-1]) + 1) for v in (zs, ys, xs))
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
    # columns first (the smaller copy), then rows
    up = np.repeat(np.repeat(low, f, axis=2), f, axis=1)
    if up.shape[1:] == tuple(shape[1:]):
        return up
    return np.ascontiguousarray(up[:, : shape[1], : shape[2]])


def convex_hull(region: np.ndarray) -> np.ndarray:
    """Convex hull of a 2D bool region (the region itself when degenerate or tiny)."""
    from skimage.morphology import convex_hull_image

    if np.count_nonzero(region) < 3:
        return region.copy()
    try:
        return convex_hull_image(region)
    except Exception:  # collinear points
        return region.copy()


def lung_envelope(lungs: np.ndarray, slices: np.ndarray | None = None) -> np.ndarray:
    """Per-slice convex hull of each lung of a canonical ``(S, P, L)`` label array (bool).

    Dense subpleural consolidation is not air, so the threshold mask misses
    it; much of it lies inside the lung's convex hull in the axial plane.
    ``slices``: only these canonical slices (others False).
    """
    out = np.zeros(lungs.shape, dtype=bool)
    for i in np.arange(lungs.shape[0]) if slices is None else np.asarray(slices):
        for label in (RIGHT_LUNG, LEFT_LUNG):
            out[i] |= convex_hull(lungs[i] == label)
    return out


def check_lungs(
    lungs: np.ndarray, spacing: tuple[float, float, float], *, axial_axis: int = 0
) -> LungCheck:
    """Plausibility of a lung label array (source order; ``spacing`` in mm, same order).

    Implausible: no lungs; lungs covering under 1 % of the image on every
    slice where they appear (2D) or under 30 mL (3D); with at least 10 cm of
    both lungs in view, one lung under a tenth of the other.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(lungs.ravel(), minlength=3)
    right, left = counts[RIGHT_LUNG] * voxel_ml, counts[LEFT_LUNG] * voxel_ml
    check = LungCheck(plausible=True, right_ml=float(right), left_ml=float(left))
    total = counts[RIGHT_LUNG] + counts[LEFT_LUNG]
    if total == 0:
        check.plausible, check.reason = False, "no lungs found"
        return check
    n_axial = lungs.shape[axial_axis]
    per_slice = np.moveaxis(lungs, axial_axis, 0).reshape(n_axial, -1)
    slice_area = per_slice.shape[1]
    in_view = np.count_nonzero(per_slice, axis=1)
    if n_axial <= 3:
        if in_view.max() < 0.01 * slice_area:
            check.plausible = False
            check.reason = f"lungs cover only {100 * in_view.max() / slice_area:.1f} % of the slice"
        return check
    if right + left < 30.0:
        check.plausible = False
        check.reason = f"only {right + left:.0f} mL of lungs found"
        return check
    extent_mm = np.count_nonzero(in_view) * spacing[axial_axis]
    small, big = sorted((right, left))
    if extent_mm >= 100.0 and small < 0.1 * big:
        if small == 0:
            check.notes.append("one lung only")
        else:
            check.plausible = False
            check.reason = f"right and left lungs differ too much ({right:.0f} vs {left:.0f} mL)"
    return check


def lung_volumes_ml(lungs: np.ndarray, voxel_volume_ml: float) -> tuple[float, float]:
    """(right, left) lung volumes in mL of a label array."""
    counts = np.bincount(lungs.ravel(), minlength=3)
    return float(counts[RIGHT_LUNG] * voxel_volume_ml), float(counts[LEFT_LUNG] * voxel_volume_ml)
