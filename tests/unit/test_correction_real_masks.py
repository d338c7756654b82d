"""Correction tools on real radiologist lesion masks (COVID-SemiSeg), incl. CT-sized speed.

Skipped where ../shared/data is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_covid_seg.correction import (
    EditHistory,
    ellipsoid_footprint,
    fill_holes,
    grow,
    interpolate_between_slices,
    list_lesions,
    shrink,
    smooth,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MASKS = DATA / "covid-semiseg" / "train" / "masks"


def _real_masks(n: int, size: int = 512) -> list[np.ndarray]:
    if not MASKS.is_dir():
        pytest.skip(f"real lesion masks not present at {MASKS}")
    from PIL import Image

    files = sorted(MASKS.glob("*.png"), key=lambda path: int(path.stem))[:n]
    masks = []
    for path in files:
        lesion = np.asarray(Image.open(path)) > 127
        lesion = lesion[:size, :size]
        canvas = np.zeros((size, size), bool)
        y0, x0 = (size - lesion.shape[0]) // 2, (size - lesion.shape[1]) // 2
        canvas[y0 : y0 + lesion.shape[0], x0 : x0 + lesion.shape[1]] = lesion
        masks.append(canvas)
    return masks


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_windowed_tools_equal_scipy_on_real_lesions():
    masks = _real_masks(4, size=256)
    volume = np.stack([m for m in masks for _ in range(2)]).astype(np.uint8)  # (8, 256, 256)
    region = volume == 1
    spacing = (1.0, 0.7, 0.7)
    footprint = ellipsoid_footprint(1.5, spacing)
    assert footprint.shape == (3, 5, 5)
    np.testing.assert_array_equal(
        grow(volume, 1.5, spacing) == 1, ndimage.binary_dilation(region, structure=footprint)
    )
    np.testing.assert_array_equal(
        shrink(volume, 1.5, spacing) == 1,
        ndimage.binary_erosion(region, structure=footprint, border_value=1),
    )
    np.testing.assert_array_equal(
        smooth(volume, 1.5, spacing, "median"),
        ndimage.median_filter(volume, footprint=footprint, mode="nearest"),
    )
    holes = fill_holes(volume) == 1
    expected = np.stack([ndimage.binary_fill_holes(plane) for plane in region])
    np.testing.assert_array_equal(holes, expected)


def test_fill_between_follows_a_moving_real_lesion():
    key = _real_masks(1, size=320)[0]
    shift = np.array([8.0, -6.0])
    volume = np.zeros((9, 320, 320), np.uint8)
    volume[0] = key
    volume[8] = ndimage.shift(key.astype(np.uint8), shift, order=0)
    out = interpolate_between_slices(volume, 0, 8, spacing=(5.0, 0.7, 0.7))
    for z in range(1, 8):
        moved = ndimage.shift(key.astype(np.uint8), shift * z / 8, order=0) == 1
        assert _dice(out[z] == 1, moved) > 0.9, z


def test_ct_sized_volume_edits_are_correct():
    """300 x 512 x 512 uint8 mask with real lesion shapes on 220 slices (3.6 M voxels).

    Speed on this size is measured by benchmarks/bench_correction.py, not here.
    """
    masks = _real_masks(30)
    volume = np.zeros((300, 512, 512), np.uint8)
    for z in range(40, 260):
        volume[z] = masks[(z // 8) % len(masks)]
    spacing = (1.0, 0.7, 0.7)
    grown = grow(volume, 2.0, spacing)
    assert grown.sum() > volume.sum()
    assert np.all(grown[volume == 1] == 1)
    shrunk = shrink(volume, 2.0, spacing)
    assert shrunk.sum() < volume.sum()
    assert np.all(volume[shrunk == 1] == 1)
    lesions = list_lesions(volume, spacing)
    assert sum(lesion.n_voxels for lesion in lesions) == int(volume.sum(dtype=np.int64))
    history = EditHistory()
    edited = volume.copy()
    edited[150, 200:260, 200:260] = 1
    history.record(volume, edited)
    history.undo(edited)
    np.testing.assert_array_equal(edited, volume)
