"""Lesion listing (volumes in mL), deletion and keep-only on hand-built masks."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_seg.correction import (
    Components,
    delete_component,
    keep_only,
    label_components,
    list_lesions,
)
from napari_covid_seg.errors import GeometryMismatchError

SPACING = (2.0, 0.5, 0.5)  # 0.5 mm^3 = 0.0005 mL per voxel


def _three_lesions() -> np.ndarray:
    mask = np.zeros((20, 40, 40), np.uint8)
    mask[2:12, 5:15, 5:15] = 1  # 1000 voxels = 0.5 mL
    mask[14:18, 20:25, 30:36] = 1  # 120 voxels = 0.06 mL
    mask[19, 39, 0] = 1  # 1 voxel = 0.0005 mL
    return mask


def test_list_lesions_volumes_order_and_geometry():
    lesions = list_lesions(_three_lesions(), SPACING)
    assert [lesion.n_voxels for lesion in lesions] == [1000, 120, 1]
    assert [lesion.volume_ml for lesion in lesions] == pytest.approx([0.5, 0.06, 0.0005])
    big, mid, tiny = lesions
    assert big.z_range == (2, 11)
    assert big.centroid_zyx == pytest.approx((6.5, 9.5, 9.5))
    assert big.bbox == (slice(2, 12), slice(5, 15), slice(5, 15))
    assert mid.z_range == (14, 17)
    assert mid.centroid_zyx == pytest.approx((15.5, 22.0, 32.5))
    assert mid.bbox == (slice(14, 18), slice(20, 25), slice(30, 36))
    assert tiny.z_range == (19, 19)
    assert tiny.centroid_zyx == pytest.approx((19.0, 39.0, 0.0))
    assert len({lesion.index for lesion in lesions}) == 3


def test_list_lesions_centroid_of_irregular_shape_and_labels():
    mask = np.zeros((3, 6, 6), np.int16)
    mask[1, 1, 1:4] = 2  # an L of 4 voxels with label 2
    mask[1, 2, 1] = 2
    lesions = list_lesions(mask, (1, 1, 1))
    assert len(lesions) == 1
    assert lesions[0].centroid_zyx == pytest.approx((1.0, 1.25, 1.75))
    assert list_lesions(mask, (1, 1, 1), label=1) == []
    assert list_lesions(np.zeros((2, 3, 3), np.uint8), (1, 1, 1)) == []


def test_connectivity_merges_corner_neighbours():
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[1, 1, 1] = 1
    mask[2, 2, 2] = 1
    assert len(list_lesions(mask, (1, 1, 1), connectivity=1)) == 2
    merged = list_lesions(mask, (1, 1, 1), connectivity=3)
    assert len(merged) == 1
    assert merged[0].n_voxels == 2


def test_delete_and_keep_only_are_exact_and_copy():
    mask = _three_lesions()
    original = mask.copy()
    comps = label_components(mask)
    assert isinstance(comps, Components)
    assert comps.n == 3
    big, mid, tiny = list_lesions(mask, SPACING, components=comps)

    deleted = delete_component(mask, comps, mid.index)
    expected = mask.copy()
    expected[14:18, 20:25, 30:36] = 0
    np.testing.assert_array_equal(deleted, expected)
    np.testing.assert_array_equal(mask, original)

    deleted_two = delete_component(mask, comps, [mid.index, tiny.index])
    expected[19, 39, 0] = 0
    np.testing.assert_array_equal(deleted_two, expected)

    kept = keep_only(mask, comps, [big.index])
    np.testing.assert_array_equal(kept, expected)
    kept_two = keep_only(mask, comps, [big.index, tiny.index])
    expected[19, 39, 0] = 1
    np.testing.assert_array_equal(kept_two, expected)


def test_full_size_component_array_is_accepted():
    mask = _three_lesions()
    comps = label_components(mask)
    full = comps.to_full()
    assert full.shape == mask.shape
    np.testing.assert_array_equal(full > 0, mask > 0)
    lesion = list_lesions(mask, SPACING, components=comps)[1]
    np.testing.assert_array_equal(
        delete_component(mask, full, lesion.index), delete_component(mask, comps, lesion.index)
    )
    with pytest.raises(GeometryMismatchError):
        delete_component(mask[:-1], comps, lesion.index)


def test_keep_only_leaves_voxels_outside_components_alone():
    mask = np.zeros((2, 8, 8), np.uint8)
    mask[0, 1:3, 1:3] = 1
    mask[1, 5:7, 5:7] = 1
    mask[0, 6, 1] = 2  # another label, not part of label-1 components
    comps = label_components(mask, label=1)
    first = list_lesions(mask, (1, 1, 1), components=comps)[0]
    out = keep_only(mask, comps, first.index)
    assert out[0, 6, 1] == 2
    assert int((out == 1).sum()) == 4
