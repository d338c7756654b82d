"""Labelled 2D slices as the CT a user has: HU NIfTI volumes with true anatomy, and
the acquisition variants a scanner produces.

Public COVID sets are tight chest crops, already lung-windowed to 0..255. A
user runs `segment` on HU volumes with real geometry, often a scanner's full
field of view. These helpers turn a labelled slice into that, so evaluation
(:mod:`.evaluate`), the robustness benchmark and the loop benchmark measure
the path a user runs:

* :func:`windowed_to_hu`: ``HU = -1350 + v * 1500 / 255`` (the lung window);
* :func:`slice_volume`: one canonical slice (rows anterior -> posterior,
  columns patient right -> left, the radiological view) as a one-slice
  ``Volume`` whose affine says exactly that (LPS storage, mm spacing);
* variants (numpy in, numpy out, seeded): :func:`embed_full_field` (the crop
  in a scanner's field of view: air around the body, a skin line, a table;
  the chest filling ~60 % of the width), :func:`sharp_noisy` (a sharper reconstruction
  kernel with noise), :func:`thick_blur` (partial volume of thick slices).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from ..io.volume import HU, Volume

#: In-plane spacing assumed for the public crops (mm; ~350 mm field of view at 512 px).
CROP_SPACING_MM = 0.7
SLICE_THICKNESS_MM = 5.0
#: Lowest value the variants write: the bottom of the lung window, not the usual -1024,
#: because slices mapped from 0..255 put aerated lung near -1100 and a variant must
#: change the acquisition, not the slice's intensities.
HU_MIN = -1350


def windowed_to_hu(v: np.ndarray) -> np.ndarray:
    """0..255 lung-windowed values -> int16 HU (W1500/L-600)."""
    return np.rint(-1350.0 + np.asarray(v, dtype=np.float32) * (1500.0 / 255.0)).astype(np.int16)


def slice_volume(
    canon: np.ndarray,
    *,
    spacing_mm: float = CROP_SPACING_MM,
    thickness_mm: float = SLICE_THICKNESS_MM,
    intensity: str = HU,
    is_mask: bool = False,
) -> Volume:
    """A one-slice Volume ``(1, H, W)`` of a canonical slice, with its true anatomy.

    Rows run anterior -> posterior and columns patient right -> left (the
    radiological view), so the affine is LPS storage: ``diag(-s, -s, t)``
    with the origin near the slice centre.
    """
    h, w = canon.shape
    affine = np.diag([-spacing_mm, -spacing_mm, thickness_mm, 1.0])
    affine[:3, 3] = (w / 2 * spacing_mm, h / 2 * spacing_mm, 0.0)
    return Volume(
        data=np.ascontiguousarray(canon)[None],
        affine=affine,
        intensity=intensity,
        is_mask=is_mask,
    )


def embed_full_field(
    hu: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, fill: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """The crop inside a scanner's field of view: air around the body, skin, a table.

    The canvas is square and about ``max(H, W) / fill`` wide, so the crop (the
    chest) fills ``fill`` of it, as the lungs do in a 512 x 512 scanner image.
    Everything outside the crop is air (-1000 HU with noise), except a 3 px
    skin line around the crop (40 HU: a crop that cuts through a lung must
    not open it to the outside air) and a curved table band under the
    patient, separated by an air gap. Returns ``(hu, mask)`` on
    the canvas (int16, uint8).
    """
    h, w = hu.shape
    side = int(np.ceil(max(h, w) / fill))
    side += side % 2
    canvas = rng.normal(-1000.0, 12.0, (side, side)).astype(np.float32)
    y0, x0 = round(side / 2.0 - h / 2.0), round(side / 2.0 - w / 2.0)
    body = np.zeros((side, side), dtype=bool)
    body[y0 : y0 + h, x0 : x0 + w] = True
    skin = ndimage.binary_dilation(body, iterations=3) & ~body
    canvas[skin] = 40.0
    rows = np.flatnonzero(body.any(axis=1))
    table_top = (rows[-1] if len(rows) else y0 + h) + 0.03 * side
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    sag = 0.04 * side * ((xx - side / 2.0) / (0.45 * side)) ** 2  # curved upwards at the sides
    band = (yy > table_top - sag) & (yy < table_top - sag + 0.025 * side)
    canvas[band & (np.abs(xx - side / 2.0) < 0.45 * side)] = 250.0
    canvas[y0 : y0 + h, x0 : x0 + w] = hu
    out_mask = np.zeros((side, side), dtype=np.uint8)
    out_mask[y0 : y0 + h, x0 : x0 + w] = mask
    return np.clip(np.rint(canvas), HU_MIN, 3071).astype(np.int16), out_mask


def sharp_noisy(
    hu: np.ndarray, rng: np.random.Generator, *, amount: float = 1.0, noise_hu: float = 60.0
) -> np.ndarray:
    """A sharper reconstruction kernel (unsharp mask) plus Gaussian noise (int16 HU)."""
    x = hu.astype(np.float32)
    blurred = ndimage.gaussian_filter(x, 1.5)
    x = x + amount * (x - blurred) + rng.normal(0.0, noise_hu, x.shape).astype(np.float32)
    return np.clip(np.rint(x), HU_MIN, 3071).astype(np.int16)


def thick_blur(hu: np.ndarray, rng: np.random.Generator, *, sigma: float = 1.5) -> np.ndarray:
    """Partial-volume blur of a thick slice (Gaussian, ``sigma`` px; int16 HU)."""
    del rng
    x = ndimage.gaussian_filter(hu.astype(np.float32), sigma)
    return np.clip(np.rint(x), HU_MIN, 3071).astype(np.int16)


Variant = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]

#: name -> (hu, mask, rng) -> (hu, mask): the variants of the robustness benchmark.
VARIANTS: dict[str, Variant] = {
    "tight_crop": lambda hu, m, rng: (hu, m),
    "full_field": embed_full_field,
    "sharp_kernel_noise": lambda hu, m, rng: (sharp_noisy(hu, rng), m),
    "thick_slice_blur": lambda hu, m, rng: (thick_blur(hu, rng), m),
    "full_field_sharp_noise": lambda hu, m, rng: (lambda e: (sharp_noisy(e[0], rng), e[1]))(
        embed_full_field(hu, m, rng)
    ),
}
