"""Post-processing of predicted masks: thresholds, lung restriction, lung completion."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Predictions farther than this outside the lung mask are dropped (mm, in-plane).
LUNG_MARGIN_MM = 5.0
#: Probability (0..1) from which a lesion voxel counts as confident.
CONFIDENT = 0.8
#: The restriction is skipped when it would remove more than this share of confident voxels.
MAX_CONFIDENT_LOSS = 0.5
#: Bone (ribs, spine) for the rib cage, HU.
BONE_HU = 150.0
#: Inside the rib cage, predictions this close to aerated lung are lung (consolidation), mm.
CHEST_WALL_MM = 50.0
#: Bone this close to the chest the lungs imply is rib (farther: scapula, arm), mm.
RIB_MM = 25.0
#: Bone above this share of the body's non-lung area is not bone (saturated windowing).
MAX_BONE_SHARE = 0.25
#: Below this local mean (HU, 5 x 5 px) a voxel is empty air: no lesion, never evidence of lung.
EMPTY_AIR_HU = -900.0


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


def restrict_to_lungs_checked(
    mask: np.ndarray,
    probability: np.ndarray,
    lungs: np.ndarray,
    spacing: tuple[float, ...],
    *,
    image: np.ndarray | None = None,
    bone_threshold: float = BONE_HU,
    air_threshold: float = -320.0,
    margin_mm: float = LUNG_MARGIN_MM,
    wall_mm: float = CHEST_WALL_MM,
    midline: float | None = None,
    empty_threshold: float | None = None,
) -> tuple[int, str]:
    """In place, on canonical ``(S, P, L)`` arrays: drop predictions outside the lungs.

    "Inside" is the lungs' per-slice convex hull dilated by ``margin_mm``,
    plus, when ``image`` is given, whatever lies inside the rib cage (the
    convex hull of the body's bone) within ``wall_mm`` of the aerated lung: dense
    consolidation and effusion-adjacent lesions along the chest wall are not
    air, yet they are lung. Nothing is removed when that would cost more
    than half of the model's confident voxels (p >= 0.8) in the thorax the
    mask implies (per slice with lungs: the convex hull of the lungs and their
    mirror image about ``midline``, plus ``wall_mm``): then the lung mask, not
    the model, is what is wrong (a lung it missed). Confident predictions far
    from any lung (fat, table, bowel below the lungs) never stop the cut,
    nor do confident predictions in empty air (local mean of ``image`` below
    ``empty_threshold``: the noise of a sharp kernel around the body), which
    no lung the mask missed can explain.

    Args:
        mask: uint8 lesion mask, modified in place.
        probability: uint8 (p x 255) or float probabilities, same shape.
        lungs: lung labels, same shape.
        spacing: ``(S, P, L)`` voxel size in mm.
        image: the intensities, same shape (for the rib cage), or None.
        bone_threshold, air_threshold: bone and air in the image's units (150
            and -320 HU by default).
        midline: the body's midline as a (fractional) column index of axis 2;
            None: the middle of the lungs' right-left extent.
        empty_threshold: empty air in the image's units (:data:`EMPTY_AIR_HU`
            for HU), or None: every confident voxel counts.
    Returns:
        ``(voxels removed, reason)``: the reason is empty when the restriction
        was applied, else says why it was skipped.
    """
    if mask.shape != lungs.shape:
        raise ValueError(f"mask {mask.shape} and lungs {lungs.shape} differ in shape")
    outside = (mask > 0) & (lungs == 0)
    rows = np.flatnonzero(outside.reshape(len(outside), -1).any(axis=1))
    if len(rows) == 0:
        return 0, ""
    h, w = lungs.shape[1:]
    # Hulls and distances on a grid at most ~128 px a side: millimetre-exact
    # borders do not matter here, and a 300-slice volume stays fast.
    g = max(1, -(-max(h, w) // 128))
    sp = tuple(float(s) * g for s in spacing[1:])
    size = tuple(2 * int(margin_mm / max(float(s), 1e-6) + 1e-6) + 1 for s in spacing[1:])
    near = tuple(2 * int(wall_mm / max(s, 1e-6) + 1e-6) + 1 for s in sp)
    rib = tuple(2 * int(RIB_MM / max(s, 1e-6) + 1e-6) + 1 for s in sp)
    cut = CONFIDENT * 255.0 if probability.dtype == np.uint8 else CONFIDENT
    cols = np.flatnonzero(lungs.any(axis=(0, 1)))
    mid = None
    if len(cols):
        mid = ((cols[0] + cols[-1] + 1) / 2.0 if midline is None else float(midline)) / g
    drops: dict[int, np.ndarray] = {}
    lost = base = 0
    for i in rows:
        lo = lungs[i, ::g, ::g]
        hull, cage, thorax = _slice_regions(
            lo,
            None if image is None else image[i, ::g, ::g],
            (air_threshold, bone_threshold),
            mid,
            near,
            rib,
        )
        inside, cage, thorax = _up(hull, g, h, w), _up(cage | hull, g, h, w), _up(thorax, g, h, w)
        if margin_mm > 0:
            inside = ndimage.maximum_filter(inside, size=size)
            cage = ndimage.maximum_filter(cage, size=size)
        inside = inside | _attached(mask[i] > 0, inside, cage)
        confident = (probability[i] >= cut) & (mask[i] > 0)
        if image is not None and empty_threshold is not None:
            local = ndimage.uniform_filter(image[i].astype(np.float32), size=5)
            confident &= local >= empty_threshold
        base += int(np.count_nonzero(confident & (thorax | (lungs[i] > 0))))
        drop = outside[i] & ~inside
        if drop.any():
            drops[int(i)] = drop
            lost += int(np.count_nonzero(drop & thorax & confident))
    others = np.setdiff1d(np.arange(len(mask)), rows)
    base += int(np.count_nonzero((probability[others] >= cut) & (mask[others] > 0)))
    if base and lost > MAX_CONFIDENT_LOSS * base:
        share = 100.0 * lost / base
        return 0, (
            f"it would remove {share:.0f} % of the model's confident lesion voxels; "
            "the lung mask probably misses part of the lungs"
        )
    removed = 0
    for i, drop in drops.items():
        mask[i][drop] = 0
        removed += int(np.count_nonzero(drop))
    return removed, ""


def _slice_regions(
    lungs: np.ndarray,
    image: np.ndarray | None,
    cuts: tuple[float, float],
    midline: float | None,
    near: tuple[int, ...],
    rib: tuple[int, ...] = (3, 3),
) -> tuple[np.ndarray, np.ndarray]:
    """``(hull, cage, thorax)`` of one (coarse) slice of lung labels, bool ``(P, L)``.

    hull: the lungs and the convex hull of each lung. cage: what the rib cage
    (the convex hull of the bone in the patient's body within ``rib`` of the
    chest the lungs imply: ribs, spine, sternum; not the table or arms) holds
    within ``near`` of aerated lung (where dense consolidation may lie; the
    caller keeps only predictions there that are attached to the hull).
    thorax: the hull of the lungs and their mirror image about ``midline``,
    dilated by ``near`` (where a missed lung would be). ``cuts``: the air and
    bone thresholds in the image's units. What bone separates from the hull
    (:func:`behind_bone`: the chest-wall muscles outside a rib) is not cage.
    """
    from .lungs import LEFT_LUNG, RIGHT_LUNG, convex_hull, outside_air

    labels, lungs = lungs, lungs > 0
    if not lungs.any():
        return np.zeros_like(lungs), np.zeros_like(lungs), np.zeros_like(lungs)
    inside = lungs.copy()
    for label in (RIGHT_LUNG, LEFT_LUNG):  # one hull per lung, not over the mediastinum
        inside |= convex_hull(labels == label)
    cage = np.zeros_like(lungs)
    near_lung = ndimage.maximum_filter(lungs, size=near)
    both = lungs.copy()
    if midline is not None:
        width = lungs.shape[1]
        src = np.rint(2.0 * midline - 1.0 - np.arange(width)).astype(int)
        ok = (src >= 0) & (src < width)
        both[:, ok] |= lungs[:, src[ok]]
    chest = convex_hull(both) | both
    if image is not None:
        # The rib cage: bone in the body (not the table), within a rib's width of
        # the chest the lungs imply (not the scapulae or the arms' bones).
        parts, _ = ndimage.label(~outside_air((image < cuts[0])[None])[0])
        body = np.isin(parts, np.unique(parts[lungs])) & (parts > 0)
        ribs = (image >= cuts[1]) & body & ndimage.maximum_filter(chest, size=rib)
        cage = convex_hull(ribs) & near_lung
        # The chest-wall muscles lie outside the ribs: not where consolidation can be.
        # Not when "bone" is a large part of the body: an image windowed so that
        # soft tissue and consolidation saturate (some 0..255 sets) has no ribs to go by.
        bright = np.count_nonzero((image >= cuts[1]) & body)
        if bright <= MAX_BONE_SHARE * np.count_nonzero(body & ~lungs):
            from ..correction.morphology import remove_small_islands

            # noise specks of a sharp kernel are no rib (under 3 coarse pixels, 8-connected)
            solid = remove_small_islands(ribs.astype(np.uint8), 3, (1.0, 1.0), connectivity=2) > 0
            cage &= ~behind_bone(cage & ~inside, inside, ndimage.maximum_filter(solid, size=3))
    thorax = ndimage.maximum_filter(chest, size=near)
    return inside, cage, thorax


def behind_bone(
    candidates: np.ndarray, hull: np.ndarray, bone: np.ndarray, steps: int = 16
) -> np.ndarray:
    """The ``candidates`` that bone separates from ``hull`` (bool ``(P, L)`` each).

    A candidate pixel is behind bone when the straight segment from the
    nearest ``hull`` pixel to it crosses ``bone`` before its last pixel: a
    blob in the chest-wall muscles lies outside a rib, consolidation lies
    between the lung and the ribs. ``steps`` points are sampled per segment.
    """
    out = np.zeros_like(candidates, dtype=bool)
    if not candidates.any() or not hull.any() or not bone.any():
        return out
    _, (iy, ix) = ndimage.distance_transform_edt(~hull, return_indices=True)
    py, px = np.nonzero(candidates)
    qy, qx = iy[py, px], ix[py, px]
    length = np.hypot(py - qy, px - qx)
    # up to 1.5 px short of the candidate itself, so a pixel touching a rib's inner face stays
    t = (
        np.linspace(0.0, 1.0, steps)[None, :]
        * np.clip(1.0 - 1.5 / np.maximum(length, 1e-6), 0, 1)[:, None]
    )
    sy = np.rint(qy[:, None] + t * (py - qy)[:, None]).astype(int)
    sx = np.rint(qx[:, None] + t * (px - qx)[:, None]).astype(int)
    out[py, px] = bone[sy, sx].any(axis=1)
    return out


def _attached(pred: np.ndarray, hull: np.ndarray, cage: np.ndarray) -> np.ndarray:
    """Predicted voxels in ``cage`` joined to ``hull`` by predicted voxels in ``cage`` (in-plane).

    Consolidation along the chest wall continues the lung's lesion; a blob in
    the chest-wall muscles or the axilla, separated from the lung by ribs or
    fat, does not touch the lung's hull and is dropped.
    """
    cand = pred & cage & ~hull
    if not cand.any():
        return cand
    # connected through kept ground only: not through voxels behind a rib
    parts, n = ndimage.label(pred | _rim(hull), structure=np.ones((3, 3), bool))
    if n == 0:
        return cand
    touching = np.unique(parts[hull & (parts > 0)])
    return cand & np.isin(parts, touching)


def _rim(hull: np.ndarray) -> np.ndarray:
    """The hull's one-voxel inner border (so a prediction touching the hull connects)."""
    return hull & ~ndimage.binary_erosion(hull)


def _up(lo: np.ndarray, g: int, h: int, w: int) -> np.ndarray:
    if g == 1:
        return lo
    return np.repeat(np.repeat(lo, g, axis=0), g, axis=1)[:h, :w]


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
