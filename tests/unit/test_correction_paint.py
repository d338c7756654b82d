"""HU-limited painting and post-filtering of brush strokes, checked voxel by voxel."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_seg.correction import (
    filter_change_to_hu_range,
    paint_ball,
    paint_ball_inplace,
    restrict_edit_to_hu_range,
)

SHAPE = (7, 24, 26)
SPACING = (2.5, 0.8, 0.7)


def _random_hu(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1100, 400, SHAPE).astype(np.int16)


def _expected_ball(center, radius, axial_only):
    expected = np.zeros(SHAPE, bool)
    for z in range(SHAPE[0]):
        for y in range(SHAPE[1]):
            for x in range(SHAPE[2]):
                if axial_only:
                    if z != round(center[0]):
                        continue
                    d2 = ((y - center[1]) * SPACING[1]) ** 2 + ((x - center[2]) * SPACING[2]) ** 2
                else:
                    d2 = sum(
                        ((v - c) * s) ** 2
                        for v, c, s in zip((z, y, x), center, SPACING, strict=True)
                    )
                expected[z, y, x] = d2 <= radius**2
    return expected


@pytest.mark.parametrize("axial_only", [True, False])
def test_paint_ball_without_hu_limit_is_the_mm_disc_or_ball(axial_only):
    mask = np.zeros(SHAPE, np.uint8)
    center, radius = (3.2, 11.3, 12.6), 5.6
    out = paint_ball(mask, center, radius, SPACING, label=2, axial_only=axial_only)
    expected = _expected_ball(center, radius, axial_only)
    np.testing.assert_array_equal(out == 2, expected)
    np.testing.assert_array_equal(out[~expected], 0)
    assert mask.sum() == 0  # copy
    assert out.dtype == np.uint8
    if axial_only:
        assert set(np.flatnonzero(out.any(axis=(1, 2)))) == {3}
    else:
        assert (
            len(np.flatnonzero(out.any(axis=(1, 2)))) == 5
        )  # |z - 3.2| * 2.5 mm <= 5.6 mm for z = 1..5


@pytest.mark.parametrize("axial_only", [True, False])
def test_paint_ball_never_marks_voxels_outside_the_hu_range(axial_only):
    image = _random_hu()
    mask = np.zeros(SHAPE, np.uint8)
    mask[3, 0:3, 0:3] = 1  # existing labels elsewhere stay
    center, radius, hu_range = (3.0, 12.0, 13.0), 6.0, (-700, -300)
    out = paint_ball(
        mask, center, radius, SPACING, 1, image=image, hu_range=hu_range, axial_only=axial_only
    )
    ball = _expected_ball(center, radius, axial_only)
    in_range = (image >= -700) & (image <= -300)
    painted = (out == 1) & (mask == 0)
    # Every voxel: painted iff in the brush and in the HU range (bounds inclusive).
    np.testing.assert_array_equal(painted, ball & in_range & (mask == 0))
    np.testing.assert_array_equal(out[mask == 1], 1)
    assert painted.sum() > 10
    assert (ball & ~in_range).sum() > 10  # the limit really excluded voxels


def test_hu_range_bounds_are_inclusive_and_erase_is_unlimited():
    image = np.full((1, 5, 5), -500, np.int16)
    image[0, 2, 3] = -400
    image[0, 2, 1] = -399
    out = paint_ball(
        np.zeros((1, 5, 5), np.uint8),
        (0, 2, 2),
        1.0,
        (1, 1, 1),
        1,
        image=image,
        hu_range=(-500, -400),
    )
    expected = np.zeros((1, 5, 5), np.uint8)
    expected[0, 1:4, 2] = 1
    expected[0, 2, 3] = 1
    np.testing.assert_array_equal(out, expected)
    full = np.ones((1, 5, 5), np.uint8)
    erased = paint_ball(full, (0, 2, 2), 1.0, (1, 1, 1), 0, image=image, hu_range=(0, 10))
    assert erased.sum() == 25 - 5


def test_paint_ball_inplace_returns_box_and_handles_outside_brush():
    mask = np.zeros(SHAPE, np.uint8)
    box = paint_ball_inplace(mask, (0, 0, 0), 1.6, SPACING, 1)
    assert box == (slice(0, 1), slice(0, 3), slice(0, 3))
    assert mask.sum() == 1 + 2 + 2 + 1  # (0,0) (1,0) (2,0) (0,1) (0,2) (1,1)
    assert paint_ball_inplace(mask, (50, 0, 0), 2.0, SPACING, 1) is None
    with pytest.raises(ValueError, match="image"):
        paint_ball_inplace(mask, (1, 1, 1), 2.0, SPACING, 1, hu_range=(-1, 1))


def test_restrict_edit_reverts_out_of_range_labels_and_keeps_erasures():
    rng = np.random.default_rng(1)
    image = _random_hu(2)
    before = (rng.random(SHAPE) < 0.3).astype(np.uint8)
    after = before.copy()
    edit = rng.random(SHAPE) < 0.4
    after[edit] = rng.integers(0, 3, int(edit.sum()))
    out = restrict_edit_to_hu_range(before, after, image, (-800, -200))
    outside = (image < -800) | (image > -200)
    revert = (before != after) & (after != 0) & outside
    expected = np.where(revert, before, after)
    np.testing.assert_array_equal(out, expected)
    erased = (before != 0) & (after == 0)
    assert erased.sum() > 0
    np.testing.assert_array_equal(out[erased], 0)
    assert revert.sum() > 0
    assert out.dtype == after.dtype
    assert not np.array_equal(out, after)  # input `after` untouched, result differs


def test_filter_change_to_hu_range_for_paint_events():
    image = np.array([[[-900, -500, 100, -500]]], np.int16)
    indices = (np.zeros(4, int), np.zeros(4, int), np.arange(4))
    old = np.array([0, 0, 0, 1])
    revert = filter_change_to_hu_range(indices, old, 1, image, (-600, 0))
    np.testing.assert_array_equal(revert, [True, False, True, False])
    erase = filter_change_to_hu_range(indices, np.ones(4), 0, image, (-600, 0))
    assert not erase.any()
