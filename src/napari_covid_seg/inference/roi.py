"""Lung-ROI preprocessing: the model sees the lungs at one scale whatever the scan.

Training crops fill the image with lung; a scanner's field of view does not.
So every slice is cut to the lungs' bounding box (over all slices of a
volume) plus a margin, made square by padding (never stretching), and only
then resized to the model's input size. The same policy runs in training,
fine-tuning and inference; it is stored in ``model.json`` as
``preprocessing["roi"]``. Model versions without that key keep the old
behaviour (whole slice resized to the input size).

Coordinates are canonical in-plane indices ``(P, L)`` = (rows, columns) of the
``(S, P, L)`` array; a box may extend past the image, where it is filled
with air (-1000 HU, or its value in a 0..255 lung-windowed image). With
``clear_clutter`` the table, the arms and other tissue not connected to the
chest are shown as air too (:func:`clutter_mask`): the crops the model was
trained on never contain them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The policy new model versions are trained and run with.
DEFAULT_ROI: dict[str, Any] = {
    "mode": "lungs",
    "margin": 0.08,
    "fill_hu": -1000.0,
    "clear_clutter": True,
}


@dataclass(frozen=True)
class Roi:
    """A square in-plane box ``[y0, y1) x [x0, x1)`` (may extend past the image).

    Attributes:
        source: what it was derived from: ``"lungs"``, ``"body"`` or ``"image"``.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    source: str = "lungs"

    @property
    def side(self) -> int:
        return self.y1 - self.y0

    def as_dict(self) -> dict[str, Any]:
        return {"box": [self.y0, self.y1, self.x0, self.x1], "source": self.source}


def roi_spec(preprocessing: dict | None) -> dict | None:
    """The ROI policy of a model's preprocessing, or None (whole slice, older versions)."""
    spec = (preprocessing or {}).get("roi")
    if not spec or spec.get("mode", "lungs") == "none":
        return None
    return {**DEFAULT_ROI, **spec}


def box_to_square(y0: int, y1: int, x0: int, x1: int, margin: float, source: str = "lungs") -> Roi:
    """A bounding box ``[y0, y1) x [x0, x1)`` grown by ``margin`` x its longer side, squared."""
    h, w = y1 - y0, x1 - x0
    side = max(h, w)
    side = max(1, round(side * (1.0 + 2.0 * margin)))
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    ny0 = round(cy - side / 2.0)
    nx0 = round(cx - side / 2.0)
    return Roi(ny0, ny0 + side, nx0, nx0 + side, source)


def roi_from_mask(mask: np.ndarray, margin: float, source: str) -> Roi | None:
    """Square ROI around the nonzero voxels of a canonical ``(S, P, L)`` or ``(P, L)`` array."""
    m = np.asarray(mask)
    plane = m.any(axis=0) if m.ndim == 3 else m.astype(bool)
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    if len(rows) == 0:
        return None
    return box_to_square(
        int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1, margin, source
    )


def image_roi(height: int, width: int) -> Roi:
    """The whole slice, padded to a square."""
    return box_to_square(0, height, 0, width, 0.0, "image")


def body_roi(canon: np.ndarray, threshold: float, margin: float, intensity: str = "hu") -> Roi:
    """ROI around the patient (the large regions that are not outside air), else the image.

    On a tight crop that is the whole slice; on a scanner's field of view the
    patient without the table (see :func:`.lungs.outside_air`). When the
    "outside air" is not air (median above -975 HU: lungs filling a crop),
    the whole slice.
    """
    from .lungs import outside_air

    n_p, n_l = canon.shape[-2:]
    g = max(1, -(-max(n_p, n_l) // 128))
    small = np.asarray(canon)[..., ::g, ::g]
    small = small if small.ndim == 3 else small[None]
    from scipy import ndimage

    from .lungs import hu_to_intensity

    outside = outside_air(small < threshold)
    if outside.any() and np.median(small[outside]) > hu_to_intensity(-975.0, intensity):
        # "outside air" that is not air (lungs filling a crop): no body to find
        return image_roi(n_p, n_l)
    parts, n = ndimage.label(~outside)
    rim = np.concatenate([outside[:, 0].ravel(), outside[:, -1].ravel(), outside[:, :, 0].ravel()])
    if n > 1 and rim.mean() > 0.4:
        # a field of view: the patient, not the table or loose objects across an air gap
        sizes = np.bincount(parts.ravel())
        sizes[0] = 0
        parts = np.isin(parts, np.flatnonzero(sizes >= 0.25 * sizes.max()))
    roi = roi_from_mask(parts > 0, 0.0, "body")
    if roi is None:
        return image_roi(n_p, n_l)
    y0, y1 = max(0, roi.y0) * g, min(n_p, roi.y1 * g)
    x0, x1 = max(0, roi.x0) * g, min(n_l, roi.x1 * g)
    return box_to_square(y0, y1, x0, x1, margin, "body")


def clutter_mask(canon: np.ndarray, lungs: np.ndarray | None, threshold: float) -> np.ndarray:
    """Tissue that is not the patient's chest: the table, arms, loose objects (bool ``(S, P, L)``).

    Per axial slice, on a grid at most ~256 px a side: tissue regions (at or
    above the air cut ``threshold``) that neither touch the lungs, nor are the
    slice's largest region, nor lie inside those. Training crops never show
    a table or arms; the model sees them as air (set to the ROI's fill value),
    as it saw the padding around its crops. Regions touching the lungs (chest wall,
    mediastinum, a piece of chest wall cut off by a crop) always stay.
    """
    from scipy import ndimage

    from .lungs import _IN_PLANE

    n_p, n_l = canon.shape[-2:]
    g = max(1, round(min(n_p, n_l) / 256))
    tissue = np.asarray(canon)[:, ::g, ::g] >= threshold
    parts, n = ndimage.label(tissue, structure=_IN_PLANE)
    if n == 0:
        return np.zeros(canon.shape, dtype=bool)
    keep = np.zeros(n + 1, dtype=bool)
    if lungs is not None:
        near = ndimage.binary_dilation(np.asarray(lungs)[:, ::g, ::g] > 0, structure=_IN_PLANE)
        keep[np.unique(parts[near & tissue])] = True
    sizes = np.bincount(parts.ravel(), minlength=n + 1)
    sizes[0] = 0
    top = np.maximum.accumulate(parts.reshape(len(parts), -1).max(axis=1))
    slice_of = np.searchsorted(top, np.arange(n + 1), side="left")
    best = np.zeros(len(parts), dtype=np.int64)
    for k in np.argsort(sizes)[::-1]:  # largest region of each slice
        if k and sizes[k] and best[slice_of[k]] == 0:
            best[slice_of[k]] = k
    keep[best[best > 0]] = True
    keep[0] = False
    # Whatever the kept regions enclose (the mediastinum inside the lungs) is chest too.
    kept = np.pad(keep[parts], ((1, 1), (0, 0), (0, 0)))
    enclosed = ndimage.binary_fill_holes(kept, structure=_IN_PLANE)[1:-1]
    keep[np.unique(parts[enclosed])] = True
    low = ~keep[parts] & (parts > 0)
    if g == 1:
        return low
    up = np.repeat(np.repeat(low, g, axis=1), g, axis=2)
    return np.ascontiguousarray(up[:, :n_p, :n_l])


def fill_value(spec: dict, intensity: str) -> float:
    """The pad value in the image's units (HU, or 0..255 lung-windowed)."""
    from .lungs import hu_to_intensity

    return hu_to_intensity(float(spec.get("fill_hu", -1000.0)), intensity)


def crop_pad(x: np.ndarray, roi: Roi, fill: float) -> np.ndarray:
    """``x[..., y0:y1, x0:x1]`` with the parts outside the image filled (numpy)."""
    h, w = x.shape[-2:]
    out = np.full((*x.shape[:-2], roi.side, roi.side), fill, dtype=x.dtype)
    sy0, sy1 = max(roi.y0, 0), min(roi.y1, h)
    sx0, sx1 = max(roi.x0, 0), min(roi.x1, w)
    if sy1 > sy0 and sx1 > sx0:
        out[..., sy0 - roi.y0 : sy1 - roi.y0, sx0 - roi.x0 : sx1 - roi.x0] = x[
            ..., sy0:sy1, sx0:sx1
        ]
    return out


def crop_pad_tensor(x: Any, roi: Roi, fill: float) -> Any:
    """Torch version of :func:`crop_pad` for ``(..., H, W)`` tensors."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    sy0, sy1 = max(roi.y0, 0), min(roi.y1, h)
    sx0, sx1 = max(roi.x0, 0), min(roi.x1, w)
    inner = x[..., sy0:sy1, sx0:sx1]
    pad = (sx0 - roi.x0, roi.x1 - sx1, sy0 - roi.y0, roi.y1 - sy1)
    if any(pad):
        inner = F.pad(inner, pad, mode="constant", value=float(fill))
    return inner


def paste_tensor(y: Any, roi: Roi, height: int, width: int, background: float) -> Any:
    """Put an ROI-sized ``(..., side, side)`` tensor back on a ``(..., H, W)`` canvas."""
    import torch

    out = torch.full((*y.shape[:-2], height, width), background, dtype=y.dtype, device=y.device)
    sy0, sy1 = max(roi.y0, 0), min(roi.y1, height)
    sx0, sx1 = max(roi.x0, 0), min(roi.x1, width)
    if sy1 > sy0 and sx1 > sx0:
        out[..., sy0:sy1, sx0:sx1] = y[
            ..., sy0 - roi.y0 : sy1 - roi.y0, sx0 - roi.x0 : sx1 - roi.x0
        ]
    return out


def roi_for_canonical(
    canon: np.ndarray,
    intensity: str,
    spacing: tuple[float, float, float],
    spec: dict,
    clutter_out: list | None = None,
    standardize_out: list | None = None,
    lungs_out: list | None = None,
) -> Roi:
    """Lung mask, plausibility check and ROI of a canonical ``(S, P, L)`` image in one call.

    What training and fine-tuning use; the engine runs the same steps itself
    because it keeps the lung mask. With a list as ``clutter_out`` and the
    policy's ``clear_clutter``, the :func:`clutter_mask` is appended to it;
    with a list as ``standardize_out``, the policy's intensity
    :class:`~.intensity.Standardization` (or None) is appended; with a list as
    ``lungs_out``, the lung labels (same shape as ``canon``).
    """
    from ..io.volume import WINDOWED
    from .lungs import GAS_MEDIAN_HU, air_threshold, check_lungs, lung_mask_canonical

    thr = air_threshold(canon, intensity)
    lungs = lung_mask_canonical(
        canon,
        spacing=spacing,
        threshold=thr,
        gas_median=None if intensity == WINDOWED else GAS_MEDIAN_HU,
    )
    check = check_lungs(lungs, spacing)
    if lungs_out is not None:
        lungs_out.append(lungs)
    roi = choose_roi(
        canon,
        lungs,
        spec=spec,
        threshold=thr,
        lungs_plausible=check.plausible,
        intensity=intensity,
    )
    if clutter_out is not None and spec.get("clear_clutter"):
        clutter_out.append(clutter_mask(canon, lungs, thr))
    if standardize_out is not None:
        from .intensity import standardization, standardize_spec

        standardize_out.append(
            standardization(
                canon,
                lungs,
                intensity,
                standardize_spec(spec),
                plausible=check.plausible,
                spacing=spacing,
            )
        )
    return roi


def choose_roi(
    canon: np.ndarray,
    lungs_canon: np.ndarray | None,
    *,
    spec: dict,
    threshold: float,
    lungs_plausible: bool = True,
    intensity: str = "hu",
) -> Roi:
    """The ROI of a canonical ``(S, P, L)`` volume under a policy ``spec``.

    The lungs' box (made symmetric about the body's midline) when the lung
    mask is plausible, else the body's, else the whole image.
    """
    margin = float(spec.get("margin", DEFAULT_ROI["margin"]))
    if lungs_canon is not None and lungs_plausible:
        plane = np.asarray(lungs_canon).any(axis=0)
        rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
        if len(rows):
            x0, x1 = int(cols[0]), int(cols[-1]) + 1
            # Symmetric about the body's midline: a lung the mask missed (white-out,
            # consolidation) is the mirror image of the one it found.
            mid = _body_midline(canon, threshold)
            if mid is not None:
                half = max(mid - x0, x1 - mid)
                x0, x1 = int(np.floor(mid - half)), int(np.ceil(mid + half))
            return box_to_square(int(rows[0]), int(rows[-1]) + 1, x0, x1, margin, "lungs")
    return body_roi(canon, threshold, margin, intensity)


def _body_midline(canon: np.ndarray, threshold: float) -> float | None:
    """Centre of the body (all but outside air) along the right-left axis, in columns."""
    from .lungs import outside_air

    n_l = canon.shape[-1]
    g = max(1, -(-max(canon.shape[-2:]) // 128))
    small = np.asarray(canon)[..., ::g, ::g]
    small = small if small.ndim == 3 else small[None]
    cols = np.flatnonzero((~outside_air(small < threshold)).any(axis=(0, 1)))
    if len(cols) == 0:
        return None
    return min(n_l, (cols[0] + cols[-1] + 1) * g / 2.0)
