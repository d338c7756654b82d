"""A deterministic synthetic chest CT phantom with COVID-like lesions.

Used as the plugin's sample data and by tests and benchmarks. Built directly
in the canonical orientation (axis 0 inferior->superior, axis 1
anterior->posterior, axis 2 patient right->left) and stored like a typical
DICOM-derived NIfTI: an LPS-ordered array with an affine that flips x and y
in RAS, anisotropic spacing and a non-zero origin.
"""

from __future__ import annotations

import numpy as np

from .volume import HU, Volume

GGO_HU = -550.0
CONSOLIDATION_HU = 25.0


def phantom_affine(
    spacing_zyx: tuple[float, float, float], origin_ras: tuple[float, float, float]
) -> np.ndarray:
    """NIfTI affine for an LPS-stored array: i -> left (-R), j -> posterior (-A), k -> S."""
    sz, sy, sx = spacing_zyx
    a = np.diag([-sx, -sy, sz, 1.0])
    a[:3, 3] = origin_ras
    return a


def make_phantom(
    shape: tuple[int, int, int] = (48, 256, 256),
    spacing: tuple[float, float, float] = (2.5, 1.4, 1.4),
    seed: int = 0,
    origin_ras: tuple[float, float, float] = (178.5, 160.0, -250.0),
) -> tuple[Volume, Volume]:
    """Synthetic chest CT (HU, int16) and its lesion truth (uint8, 1 = lesion).

    Args:
        shape: (z, y, x) voxels.
        spacing: (z, y, x) mm.
        seed: lesion placement, vessels and noise.
    Returns:
        ``(image, truth)`` Volumes with the same affine. ``truth.extra`` holds
        ``"lungs"`` (uint8, 1 = right lung, 2 = left lung) and ``"lesion_types"``
        (uint8, 1 = ground-glass opacity, 2 = consolidation).
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z = np.linspace(-1.0, 1.0, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1.0, 1.0, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1.0, 1.0, nx, dtype=np.float32)[None, None, :]

    # Body: an ellipse in-plane, slightly narrower near the top.
    taper = 1.0 - 0.08 * (z + 1.0) / 2.0
    body_r = (x / (0.88 * taper)) ** 2 + ((y - 0.02) / 0.62) ** 2
    body = body_r <= 1.0
    fat = body & (body_r > 0.80)
    img = np.full(shape, -1000.0, dtype=np.float32)
    img[body] = 40.0
    img[fat] = -100.0

    # Lungs: two ellipsoids, domed at the base (diaphragm), tapered at the apex.
    lungs = np.zeros(shape, dtype=np.uint8)
    zz = (z + 1.0) / 2.0  # 0 at the base, 1 at the top
    width = 0.34 * np.sqrt(np.clip(1.15 - zz, 0.0, None))
    for label, cx in ((1, -0.40), (2, 0.40)):
        dome = zz > 0.08 + 0.25 * ((x - cx) / 0.35) ** 2
        r = ((x - cx) / np.maximum(width, 1e-3)) ** 2 + ((y - 0.0) / 0.48) ** 2
        lungs[(r <= 1.0) & dome & body] = label
    in_lung = lungs > 0
    img[in_lung] = -860.0

    # Mediastinum/heart between the lungs, spine and ribs.
    spine = ((x / 0.09) ** 2 + ((y - 0.50) / 0.09) ** 2 <= 1.0) & body
    img[spine & ~in_lung] = 650.0
    ang = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    rib = np.zeros(shape[1:], dtype=bool)
    for a in ang:
        rx, ry = 0.80 * np.cos(a), 0.02 + 0.56 * np.sin(a)
        rib |= ((x[0] - rx) / 0.045) ** 2 + ((y[0] - ry) / 0.030) ** 2 <= 1.0
    img[np.broadcast_to(rib, shape) & body & ~in_lung] = 700.0

    # Trachea and main bronchi (air) in the upper half.
    trachea = ((x / 0.05) ** 2 + ((y + 0.10) / 0.05) ** 2 <= 1.0) & (z > 0.2)
    img[trachea & body] = -1000.0

    # Vessels: thin tubes wandering along z inside the lungs.
    vessels = np.zeros(shape, dtype=bool)
    for _ in range(24):
        side = rng.choice([-0.40, 0.40])
        cx0, cy0 = side + rng.uniform(-0.15, 0.15), rng.uniform(-0.3, 0.3)
        dx, dy = rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15)
        rad = rng.uniform(0.012, 0.03)
        vessels |= ((x - cx0 - dx * z) ** 2 + (y - cy0 - dy * z) ** 2) <= rad**2
    vessels &= in_lung
    img[vessels] = 30.0

    # Lesions: peripheral/posterior ellipsoids, GGO and consolidation.
    types = np.zeros(shape, dtype=np.uint8)
    specs = [(1, 0.13), (1, 0.09), (2, 0.07), (1, 0.06), (2, 0.10), (1, 0.05)]
    zc_choices = rng.uniform(-0.45, 0.45, size=len(specs))
    for (kind, rad), zc in zip(specs, zc_choices, strict=True):
        side = rng.choice([-0.40, 0.40])
        cx = side + np.sign(side) * rng.uniform(0.02, 0.10)
        cy = rng.uniform(0.0, 0.30)
        rz = rad * rng.uniform(1.2, 1.8) * (shape[1] / shape[0]) * (spacing[1] / spacing[0])
        blob = ((x - cx) / rad) ** 2 + ((y - cy) / (rad * 1.2)) ** 2 + ((z - zc) / rz) ** 2 <= 1.0
        types[blob & in_lung] = kind
    ggo = types == 1
    texture = rng.normal(0.0, 60.0, size=shape).astype(np.float32)
    img[ggo] = GGO_HU + texture[ggo]
    img[types == 2] = CONSOLIDATION_HU
    img[vessels] = 30.0

    img += rng.normal(0.0, 18.0, size=shape).astype(np.float32)
    image = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    truth = (types > 0).astype(np.uint8)
    affine = phantom_affine(spacing, origin_ras)
    image_vol = Volume(data=image, affine=affine, intensity=HU)
    truth_vol = Volume(
        data=truth,
        affine=affine.copy(),
        is_mask=True,
        extra={"lungs": lungs, "lesion_types": types},
    )
    return image_vol, truth_vol
