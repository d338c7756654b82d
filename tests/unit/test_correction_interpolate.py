"""Fill between slices: discs interpolate radius and centre; key slices stay as drawn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_covid_seg.correction import (
    CorrectionError,
    annotated_slices,
    interpolate_all_gaps,
    interpolate_between_slices,
)

SHAPE = (14, 64, 64)


def _disc(centre, radius) -> np.ndarray:
    y, x = np.ogrid[: SHAPE[1], : SHAPE[2]]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def _radius_and_centre(plane: np.ndarray) -> tuple[float, np.ndarray]:
    ys, xs = np.nonzero(plane)
    return float(np.sqrt(plane.sum() / np.pi)), np.array([ys.mean(), xs.mean()])


@pytest.mark.parametrize(
    ("c0", "r0", "c1", "r1"),
    [
        ((20, 22), 5, (26, 30), 12),  # overlapping, growing and moving
        ((16, 18), 4, (30, 32), 12),  # not overlapping at all
        ((40, 20), 9, (40, 20), 3),  # concentric, shrinking
    ],
)
def test_two_discs_give_discs_with_interpolated_radius_and_centre(c0, r0, c1, r1):
    z0, z1 = 2, 10
    mask = np.zeros(SHAPE, np.uint8)
    mask[z0] = _disc(c0, r0)
    mask[z1] = _disc(c1, r1)
    out = interpolate_between_slices(mask, z1, z0)  # order of key slices is free
    np.testing.assert_array_equal(out[z0], mask[z0])
    np.testing.assert_array_equal(out[z1], mask[z1])
    np.testing.assert_array_equal(out[:z0], 0)
    np.testing.assert_array_equal(out[z1 + 1 :], 0)
    for z in range(z0 + 1, z1):
        t = (z - z0) / (z1 - z0)
        plane = out[z] == 1
        assert ndimage.label(plane)[1] == 1, f"slice {z} is not one blob"
        radius, centre = _radius_and_centre(plane)
        assert radius == pytest.approx((1 - t) * r0 + t * r1, abs=1.0), z
        expected_centre = (1 - t) * np.array(c0) + t * np.array(c1)
        np.testing.assert_allclose(centre, expected_centre, atol=1.0, err_msg=f"slice {z}")
        # A disc: every voxel within (radius - 1) of the centre is filled.
        inner = _disc(expected_centre, radius - 1.5)
        assert plane[inner].all(), z
    assert out.dtype == np.uint8
    assert mask[z0 + 1 : z1].sum() == 0  # input untouched


def test_identical_key_slices_are_copied_exactly():
    shape = np.zeros(SHAPE[1:], bool)
    shape[10:30, 12:20] = True
    shape[25:30, 12:40] = True  # an L
    mask = np.zeros(SHAPE, np.int16)
    mask[1] = shape
    mask[6] = shape
    out = interpolate_between_slices(mask, 1, 6)
    for z in range(1, 7):
        np.testing.assert_array_equal(out[z], shape.astype(np.int16))


def test_two_lesions_per_slice_stay_apart_and_lonely_lesion_tapers():
    mask = np.zeros(SHAPE, np.uint8)
    mask[0] = _disc((20, 14), 6) | _disc((44, 50), 5)
    mask[8] = _disc((22, 16), 7) | _disc((46, 48), 5)
    mask[0] |= _disc((50, 12), 4)  # only on the first key slice
    out = interpolate_between_slices(mask, 0, 8)
    for z in range(1, 8):
        labels = ndimage.label(out[z] == 1)[0]
        left = labels[round(20 + 2 * z / 8), round(14 + 2 * z / 8)]
        right = labels[round(44 + 2 * z / 8), round(50 - 2 * z / 8)]
        assert left and right and left != right, z
        lonely_present = bool(out[z][48:53, 10:15].any())
        assert lonely_present == (z / 8 < 0.5), z  # gone halfway
    assert out[1, 50, 12] == 1


def test_fill_replaces_label_in_between_and_keeps_other_labels():
    mask = np.zeros(SHAPE, np.uint8)
    mask[0] = _disc((30, 30), 8)
    mask[4] = _disc((30, 30), 8)
    mask[2, 0:3, 0:3] = 1  # a stray label voxel in an in-between slice
    mask[2, 30, 30] = 2  # another label inside the interpolated shape
    out = interpolate_between_slices(mask, 0, 4)
    assert out[2, 0:3, 0:3].sum() == 0
    assert out[2, 30, 30] == 2
    expected = _disc((30, 30), 8).astype(np.uint8)
    expected[30, 30] = 2
    np.testing.assert_array_equal(out[2], expected)


def test_interpolate_all_gaps_fills_each_gap_and_leaves_the_ends():
    mask = np.zeros(SHAPE, np.uint8)
    mask[2] = _disc((30, 30), 4)
    mask[3] = _disc((30, 30), 5)
    mask[7] = _disc((30, 30), 9)
    mask[11] = _disc((30, 30), 5)
    np.testing.assert_array_equal(annotated_slices(mask), [2, 3, 7, 11])
    out = interpolate_all_gaps(mask)
    np.testing.assert_array_equal(annotated_slices(out), np.arange(2, 12))
    for z in (2, 3, 7, 11):
        np.testing.assert_array_equal(out[z], mask[z])
    np.testing.assert_array_equal(out[:2], 0)
    np.testing.assert_array_equal(out[12:], 0)
    radii = [_radius_and_centre(out[z] == 1)[0] for z in range(3, 12)]
    assert radii[:5] == sorted(radii[:5])  # grows from 5 to 9 between z=3 and z=7
    assert radii[4:] == sorted(radii[4:], reverse=True)  # and shrinks back to 5


def test_empty_key_slice_raises_a_user_error():
    mask = np.zeros(SHAPE, np.uint8)
    mask[2] = _disc((30, 30), 4)
    with pytest.raises(CorrectionError, match="slice 9"):
        interpolate_between_slices(mask, 2, 9)
    # Adjacent key slices: nothing to fill, nothing raised.
    np.testing.assert_array_equal(interpolate_between_slices(mask, 2, 3), mask)


def test_anisotropic_pixels_use_mm_distances():
    mask = np.zeros((5, 40, 80), np.uint8)
    y, x = np.ogrid[:40, :80]
    # Circles in mm on 1.0 x 0.5 mm pixels are ellipses in voxels.
    mask[0] = (y - 20) ** 2 + ((x - 40) * 0.5) ** 2 <= 6**2
    mask[4] = (y - 20) ** 2 + ((x - 40) * 0.5) ** 2 <= 14**2
    out = interpolate_between_slices(mask, 0, 4, spacing=(3.0, 1.0, 0.5))
    middle = out[2] == 1
    rows, cols = np.nonzero(middle)
    assert (rows.max() - rows.min() + 1) == pytest.approx(21, abs=1.5)  # 2 * 10 mm / 1 mm
    assert (cols.max() - cols.min() + 1) == pytest.approx(41, abs=2.5)  # 2 * 10 mm / 0.5 mm


def test_interpolate_lesion_touches_only_that_lesion_between_its_key_slices():
    """Label 1 on every slice (a model mask): only the drawn lesion's in-between slices change."""
    from napari_covid_seg.correction import interpolate_lesion

    mask = np.zeros(SHAPE, np.uint8)
    mask[:, 5:9, 5:9] = 1  # another lesion, label 1 on every slice
    mask[0, 5:9, 5:9] = 0
    mask[12, 5:9, 5:9] = 0  # ...with gaps that must stay gaps
    mask[3] |= _disc((40, 40), 4).astype(np.uint8)  # the user's lesion: drawn on 3 and 9,
    mask[9] |= _disc((40, 40), 10).astype(np.uint8)
    mask[5, 38:42, 38:42] = 1  # ...and a model blob in between that gets replaced
    lesion = np.zeros(SHAPE, bool)
    lesion[:, 25:60, 25:60] = True
    out = interpolate_lesion(mask, [3, 9], lesion, label=1, spacing=(2.0, 1.0, 1.0))
    changed = np.flatnonzero((out != mask).any(axis=(1, 2)))
    assert set(changed) <= set(range(4, 9))
    np.testing.assert_array_equal(out[:, :20, :20], mask[:, :20, :20])  # the other lesion
    np.testing.assert_array_equal(out[[3, 9]], mask[[3, 9]])  # key slices as drawn
    radii = [np.sqrt(out[z, 25:60, 25:60].sum() / np.pi) for z in range(3, 10)]
    assert np.all(np.diff(radii) > 0)  # grows from 4 to 10 in between
    with pytest.raises(CorrectionError, match="at least two"):
        interpolate_lesion(mask, [3], lesion)
    with pytest.raises(CorrectionError, match="slice 6"):
        interpolate_lesion(mask, [3, 6], lesion)
