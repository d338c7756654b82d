"""Morphological correction tools on hand-built masks with known exact answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_covid_seg.correction import _ball as ball_module
from napari_covid_seg.correction import (
    ellipsoid_footprint,
    fill_holes,
    grow,
    remove_small_islands,
    shrink,
    smooth,
)
from napari_covid_seg.correction import morphology as morph


@pytest.fixture(
    params=[(None, 150), ((3, 5, 4), 150), ((3, 5, 4), 0)],
    ids=["default-blocks", "tiny-blocks", "tiny-blocks-edt"],
)
def blocks(request, monkeypatch):
    """Run the windowed operators with default and tiny blocks (many window seams), and
    with the footprint-row engine or the distance-transform engine."""
    block, max_rows = request.param
    monkeypatch.setattr(morph, "_BLOCK", block)
    monkeypatch.setattr(ball_module, "_MAX_ROWS", max_rows)
    return block


def _blobs(shape=(12, 30, 28), seed=0, fraction=0.45) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    return (field > np.quantile(field, 1 - fraction)).astype(np.uint8)


# --- remove_small_islands -------------------------------------------------------


def _islands() -> np.ndarray:
    mask = np.zeros((10, 20, 20), np.uint8)
    mask[1, 1, 1] = 1  # 1 voxel
    mask[3:5, 5:7, 5:7] = 1  # 8 voxels
    mask[6:9, 12:15, 12:15] = 1  # 27 voxels
    return mask


def test_remove_small_islands_uses_mm3_with_anisotropic_spacing():
    mask = _islands()
    spacing = (2.0, 0.5, 0.5)  # 0.5 mm^3 per voxel: islands of 0.5, 4 and 13.5 mm^3
    before = mask.copy()
    out = remove_small_islands(mask, 4.0, spacing)
    expected = mask.copy()
    expected[1, 1, 1] = 0
    np.testing.assert_array_equal(out, expected)  # exactly 4 mm^3 is kept
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(mask, before)  # input untouched

    expected[3:5, 5:7, 5:7] = 0
    np.testing.assert_array_equal(remove_small_islands(mask, 4.01, spacing), expected)
    assert remove_small_islands(mask, 14.0, spacing).sum() == 0


@pytest.mark.parametrize(("connectivity", "kept"), [(1, 0), (2, 0), (3, 2)])
def test_remove_small_islands_connectivity(connectivity, kept):
    mask = np.zeros((5, 5, 5), np.int16)
    mask[1, 1, 1] = 1
    mask[2, 2, 2] = 1  # touches only by a corner
    out = remove_small_islands(mask, 2.0, (1, 1, 1), connectivity=connectivity)
    assert int(out.sum()) == kept
    assert out.dtype == np.int16


def test_remove_small_islands_label_selection():
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[1, 1, 1] = 1
    mask[1, 1, 2] = 2  # a 2-voxel island made of two labels
    mask[2, 5, 5] = 2
    only_label_1 = remove_small_islands(mask, 1.5, (1, 1, 1), label=1)
    expected = mask.copy()
    expected[1, 1, 1] = 0
    np.testing.assert_array_equal(only_label_1, expected)
    any_label = remove_small_islands(mask, 1.5, (1, 1, 1))
    expected = mask.copy()
    expected[2, 5, 5] = 0  # the mixed island has 2 voxels together and stays
    np.testing.assert_array_equal(any_label, expected)


# --- fill_holes -----------------------------------------------------------------


def test_fill_holes_ring_and_open_c_shape():
    mask = np.zeros((3, 12, 12), np.uint8)
    mask[1, 1:8, 1:8] = 1
    mask[1, 3:6, 3:6] = 0  # enclosed 3x3 hole
    mask[0, 2:7, 2:7] = 1
    mask[0, 3:6, 3:6] = 0
    mask[0, 4, 2] = 0  # C shape: the hole opens to the outside
    out = fill_holes(mask)
    expected = mask.copy()
    expected[1, 3:6, 3:6] = 1
    np.testing.assert_array_equal(out, expected)


def test_fill_holes_ring_on_image_border_and_other_labels():
    mask = np.zeros((1, 6, 6), np.uint8)
    mask[0, 0:5, 0:5] = 1  # touches the image border
    mask[0, 1:4, 1:4] = 0
    mask[0, 2, 2] = 2  # another label inside the hole is left alone
    out = fill_holes(mask)
    expected = mask.copy()
    expected[0, 1:4, 1:4] = 1
    expected[0, 2, 2] = 2
    np.testing.assert_array_equal(out, expected)


def test_fill_holes_per_slice_versus_3d():
    tube = np.zeros((6, 9, 9), np.uint8)
    tube[:, 2:7, 2:7] = 1
    tube[:, 3:6, 3:6] = 0  # a tube open at both ends along z
    per_slice = fill_holes(tube, per_slice=True)
    expected = tube.copy()
    expected[:, 3:6, 3:6] = 1
    np.testing.assert_array_equal(per_slice, expected)
    np.testing.assert_array_equal(fill_holes(tube, per_slice=False), tube)  # not enclosed in 3D

    box = tube.copy()
    box[1, 2:7, 2:7] = 1
    box[4, 2:7, 2:7] = 1  # closed lids: a 3x3x2 cavity at z 2..3
    filled = fill_holes(box, per_slice=False)
    expected = box.copy()
    expected[2:4, 3:6, 3:6] = 1
    np.testing.assert_array_equal(filled, expected)


# --- grow / shrink --------------------------------------------------------------


def test_grow_single_voxel_is_the_mm_ellipsoid(blocks):
    mask = np.zeros((9, 11, 11), np.uint8)
    mask[4, 5, 5] = 1
    out = grow(mask, 2.0, (2.0, 1.0, 1.0))
    expected = np.zeros_like(mask)
    for dz in range(-2, 3):
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                if (2 * dz) ** 2 + dy**2 + dx**2 <= 4:
                    expected[4 + dz, 5 + dy, 5 + dx] = 1
    assert expected.sum() == 15  # 13 in-plane + one above + one below
    np.testing.assert_array_equal(out, expected)
    assert mask.sum() == 1


def test_grow_does_not_overwrite_other_labels_and_keeps_dtype():
    mask = np.zeros((1, 5, 9), np.int32)
    mask[0, 2, 2] = 1
    mask[0, 2, 3] = 3
    out = grow(mask, 1.0, (1, 1, 1))
    assert out.dtype == np.int32
    assert out[0, 2, 3] == 3
    assert out[0, 1, 2] == out[0, 3, 2] == out[0, 2, 1] == 1
    assert out[0, 2, 4] == 0  # no growth "through" another label's voxel: 2 mm away


def test_grow_matches_binary_dilation_with_mm_ball(blocks):
    mask = _blobs(fraction=0.08)
    spacing = (2.5, 0.8, 0.8)
    footprint = ellipsoid_footprint(2.6, spacing)
    reference = ndimage.binary_dilation(mask == 1, structure=footprint)
    np.testing.assert_array_equal(grow(mask, 2.6, spacing) == 1, reference)


def test_shrink_cube_layers():
    mask = np.zeros((11, 11, 11), np.uint8)
    mask[2:9, 2:9, 2:9] = 1  # 7x7x7 cube
    one = shrink(mask, 1.0, (1, 1, 1))
    expected = np.zeros_like(mask)
    expected[3:8, 3:8, 3:8] = 1
    np.testing.assert_array_equal(one, expected)
    np.testing.assert_array_equal(shrink(mask, 1.5, (1, 1, 1)), expected)
    expected[:] = 0
    expected[4:7, 4:7, 4:7] = 1
    np.testing.assert_array_equal(shrink(mask, 2.0, (1, 1, 1)), expected)
    # 1 mm does not reach across a 2 mm slice gap: only in-plane erosion.
    anisotropic = shrink(mask, 1.0, (2, 1, 1))
    expected[:] = 0
    expected[2:9, 3:8, 3:8] = 1
    np.testing.assert_array_equal(anisotropic, expected)


def test_shrink_is_inverse_of_grow_on_a_cube(blocks):
    mask = np.zeros((12, 16, 16), np.uint8)
    mask[3:9, 4:11, 5:12] = 1
    spacing = (2.0, 0.7, 0.7)
    grown = grow(mask, 2.1, spacing)
    assert grown.sum() > mask.sum()
    np.testing.assert_array_equal(shrink(grown, 2.1, spacing), mask)


def test_shrink_ignores_the_image_border_and_matches_erosion(blocks):
    mask = np.zeros((4, 6, 6), np.uint8)
    mask[:, 0:4, 0:4] = 1  # touches three borders
    expected = np.zeros_like(mask)
    expected[:, 0:3, 0:3] = 1
    np.testing.assert_array_equal(shrink(mask, 1.0, (1, 1, 1)), expected)

    blobs = _blobs(fraction=0.6)
    spacing = (2.0, 0.7, 0.9)
    footprint = ellipsoid_footprint(1.9, spacing)
    reference = ndimage.binary_erosion(blobs == 1, structure=footprint, border_value=1)
    np.testing.assert_array_equal(shrink(blobs, 1.9, spacing) == 1, reference)


# --- smooth ---------------------------------------------------------------------


def test_smooth_median_equals_scipy_median_filter(blocks):
    mask = _blobs(seed=3)
    spacing = (2.0, 0.7, 0.7)
    footprint = ellipsoid_footprint(1.5, spacing)
    assert footprint.shape == (1, 5, 5)
    reference = ndimage.median_filter(mask, footprint=footprint, mode="nearest")
    np.testing.assert_array_equal(smooth(mask, 1.5, spacing, "median"), reference)
    footprint3d = ellipsoid_footprint(2.0, (1.0, 0.9, 0.9))
    reference3d = ndimage.median_filter(mask, footprint=footprint3d, mode="nearest")
    np.testing.assert_array_equal(smooth(mask, 2.0, (1.0, 0.9, 0.9)), reference3d)


def test_smooth_closing_and_opening_equal_grow_shrink_compositions(blocks):
    mask = _blobs(seed=5)
    spacing = (1.5, 0.8, 0.8)
    footprint = ellipsoid_footprint(1.7, spacing)
    region = mask == 1
    closing = ndimage.binary_erosion(
        ndimage.binary_dilation(region, structure=footprint), structure=footprint, border_value=1
    )
    opening = ndimage.binary_dilation(
        ndimage.binary_erosion(region, structure=footprint, border_value=1), structure=footprint
    )
    np.testing.assert_array_equal(smooth(mask, 1.7, spacing, "closing") == 1, closing)
    np.testing.assert_array_equal(smooth(mask, 1.7, spacing, "opening") == 1, opening)
    np.testing.assert_array_equal(
        smooth(mask, 1.7, spacing, "closing"), shrink(grow(mask, 1.7, spacing), 1.7, spacing)
    )


def test_smooth_removes_spike_and_fills_notch():
    plate = np.zeros((1, 12, 12), np.uint8)
    plate[0, 3:9, 3:9] = 1
    spiky = plate.copy()
    spiky[0, 2, 5] = 1  # a one-voxel spike
    notched = plate.copy()
    notched[0, 3, 5] = 0  # a one-voxel notch
    # 1 mm = 4-neighbour cross: the majority vote keeps the square's corners.
    np.testing.assert_array_equal(smooth(spiky, 1.0, (3, 1, 1), "median"), plate)
    np.testing.assert_array_equal(smooth(notched, 1.0, (3, 1, 1), "median"), plate)
    # 1.5 mm = 3x3 square: opening keeps the square, closing keeps it filled.
    np.testing.assert_array_equal(smooth(spiky, 1.5, (3, 1, 1), "opening"), plate)
    np.testing.assert_array_equal(smooth(notched, 1.5, (3, 1, 1), "closing"), plate)
    # The cross cannot remove the spike by opening: a cross fits at its base.
    np.testing.assert_array_equal(smooth(spiky, 1.0, (3, 1, 1), "opening")[0, 2, 5], 1)


def test_smooth_radius_below_spacing_changes_nothing():
    mask = _blobs()
    np.testing.assert_array_equal(smooth(mask, 0.5, (1, 1, 1), "median"), mask)


def test_bad_arguments_raise():
    mask = _islands()
    with pytest.raises(ValueError, match="method"):
        smooth(mask, 1.0, (1, 1, 1), "gaussian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spacing"):
        grow(mask, 1.0, (1, 1))
    with pytest.raises(ValueError, match="label"):
        shrink(mask, 1.0, (1, 1, 1), label=0)
    with pytest.raises(TypeError):
        fill_holes(mask.astype(np.float32))
