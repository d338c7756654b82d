"""Lung mask, lung restriction, quantification and per-slice uncertainty."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_covid_seg.inference.lungs import LEFT_LUNG, RIGHT_LUNG, lung_mask
from napari_covid_seg.inference.postprocess import (
    complete_lungs,
    mask_from_probability,
    restrict_to_lungs,
)
from napari_covid_seg.inference.quantify import count_lesions, quantify
from napari_covid_seg.inference.uncertainty import (
    binary_entropy,
    most_uncertain_slices,
    slice_uncertainty,
)
from napari_covid_seg.io import WINDOWED, Volume
from napari_covid_seg.io.phantom import make_phantom


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(32, 192, 192), seed=5)


def test_lung_mask_matches_phantom_lungs_per_side(phantom):
    img, truth = phantom
    t0 = time.perf_counter()
    lungs = lung_mask(img)
    elapsed = time.perf_counter() - t0
    gt = truth.extra["lungs"]
    assert lungs.dtype == np.uint8 and lungs.shape == img.data.shape
    assert dice(lungs == RIGHT_LUNG, gt == RIGHT_LUNG) > 0.97
    assert dice(lungs == LEFT_LUNG, gt == LEFT_LUNG) > 0.97
    # holes (vessels, lesions inside aerated lung) are filled, outside air and body excluded
    assert np.mean(lungs[truth.data > 0] > 0) > 0.85
    assert not lungs[img.data > 300].any()  # no bone
    assert lungs[:, 0, :].sum() == 0 and lungs[:, :, 0].sum() == 0  # no outside air
    assert elapsed < 10.0  # generous: ~0.1 s on a quiet 2-core CPU


def test_lung_mask_half_resolution_path_and_windowed_input():
    img, truth = make_phantom(shape=(12, 400, 400), spacing=(5.0, 0.8, 0.8), seed=2)
    lungs = lung_mask(img)  # 400 px: runs at half resolution in-plane
    gt = truth.extra["lungs"]
    assert dice(lungs == RIGHT_LUNG, gt == RIGHT_LUNG) > 0.95
    assert dice(lungs == LEFT_LUNG, gt == LEFT_LUNG) > 0.95
    v = np.clip((img.data.astype(np.float32) + 1350) * 255 / 1500, 0, 255).astype(np.uint8)
    win = lung_mask(Volume(data=v, affine=img.affine, intensity=WINDOWED))
    assert dice(win > 0, lungs > 0) > 0.98


def test_lung_mask_joined_lungs_are_split_at_the_midline():
    img, truth = make_phantom(shape=(16, 128, 128), seed=0)
    data = img.data.copy()
    gt = truth.extra["lungs"]
    # an air bridge joining the two lungs in the middle slices
    data[6:10, 60:68, 40:90] = -900
    lungs = lung_mask(img.with_data(data))
    assert dice(lungs == RIGHT_LUNG, gt == RIGHT_LUNG) > 0.9
    assert dice(lungs == LEFT_LUNG, gt == LEFT_LUNG) > 0.9


def test_lung_mask_of_an_air_only_image_is_empty():
    vol = Volume(data=np.full((4, 64, 64), -1000, np.int16), affine=np.eye(4))
    assert lung_mask(vol).sum() == 0


def test_restrict_to_lungs_drops_far_predictions_only():
    lungs = np.zeros((3, 50, 50), np.uint8)
    lungs[:, 10:30, 10:30] = RIGHT_LUNG
    mask = np.zeros_like(lungs)
    mask[1, 15:20, 15:20] = 1  # inside
    mask[1, 30:32, 15:18] = 1  # 2 and 4 mm outside: within a 5 mm margin at 2 mm spacing
    mask[1, 32, 20] = 1  # 6 mm outside
    mask[1, 45:48, 45:48] = 1  # far outside
    kept_inside = mask[1, 15:20, 15:20].copy()
    removed = restrict_to_lungs(mask, lungs, spacing=(3.0, 2.0, 2.0), margin_mm=5.0)
    assert removed == 10
    assert mask[1, 45:48, 45:48].sum() == 0
    assert mask[1, 30:32, 15:18].sum() == 6 and mask[1, 32, 20] == 0
    np.testing.assert_array_equal(mask[1, 15:20, 15:20], kept_inside)
    # axial axis other than 0: restriction is per slice of that axis
    m2 = np.moveaxis(mask.copy(), 0, 2)
    m2[45:48, 45:48, 1] = 1
    restrict_to_lungs(m2, np.moveaxis(lungs, 0, 2), axial_axis=2, spacing=(2.0, 2.0, 3.0))
    np.testing.assert_array_equal(np.moveaxis(m2, 2, 0), mask)


def test_complete_lungs_adds_subpleural_lesions_to_the_nearest_lung():
    lungs = np.zeros((2, 40, 60), np.uint8)
    lungs[:, 10:30, 5:25] = RIGHT_LUNG
    lungs[:, 10:30, 35:55] = LEFT_LUNG
    mask = np.zeros_like(lungs)
    mask[0, 12:16, 25:28] = 1  # just right of the right lung
    mask[0, 12:16, 32:35] = 1  # just left of the left lung
    out = complete_lungs(lungs, mask)
    assert np.all(out[0, 12:16, 25:28] == RIGHT_LUNG)
    assert np.all(out[0, 12:16, 32:35] == LEFT_LUNG)
    assert lungs[0, 12, 26] == 0  # input untouched
    assert complete_lungs(lungs, np.zeros_like(mask)) is lungs


def test_quantification_against_hand_computed_volumes():
    lungs = np.zeros((10, 40, 40), np.uint8)
    lungs[0:10, 0:10, 0:10] = RIGHT_LUNG  # 1000 voxels
    lungs[0:10, 20:40, 0:10] = LEFT_LUNG  # 2000 voxels
    mask = np.zeros_like(lungs)
    mask[0:4, 0:5, 0:5] = 1  # 100 voxels, right
    mask[5:7, 20:25, 0:5] = 1  # 50 voxels, left
    mask[2, 30, 30] = 1  # 1 voxel outside both lungs
    mask[8, 25, 5] = 1  # a second, separate left lesion (1 voxel)
    q = quantify(mask, voxel_volume_ml=0.5, lungs=lungs)
    assert q.n_lesions == 4
    assert q.lesion_ml == pytest.approx(152 * 0.5)
    assert q.right_lung_ml == pytest.approx(500.0) and q.left_lung_ml == pytest.approx(1000.0)
    assert q.lung_ml == pytest.approx(1500.0)
    assert q.right_lesion_ml == pytest.approx(50.0) and q.left_lesion_ml == pytest.approx(25.5)
    assert q.percent_right == pytest.approx(10.0)
    assert q.percent_left == pytest.approx(100 * 51 / 2000)
    assert q.percent_lungs == pytest.approx(100 * 151 / 3000)
    line = q.summary()
    assert "76.0 mL" in line and "4 lesions" in line and "R 10.0%" in line and "\n" not in line
    bare = quantify(mask, 2.0)
    assert bare.lesion_ml == pytest.approx(304.0) and bare.percent_lungs is None
    assert "of lungs" not in bare.summary()


def test_lesion_count_uses_full_3d_connectivity():
    m = np.zeros((3, 5, 5), np.uint8)
    m[0, 0, 0] = m[1, 1, 1] = 1  # diagonal neighbours: one lesion
    m[2, 4, 4] = 1
    assert count_lesions(m) == 2


def test_uncertainty_scores():
    assert binary_entropy(np.array([0.5]))[0] == pytest.approx(1.0)
    assert binary_entropy(np.array([0.0, 1.0])).max() < 1e-5
    prob = np.zeros((3, 8, 8), np.uint8)
    prob[1] = 128  # p ~ 0.5 everywhere: maximal
    prob[2, :4] = 128  # half the slice
    region = np.zeros_like(prob)
    region[:, :4] = 1
    s = slice_uncertainty(prob)
    assert s[0] == 0.0 and s[1] == pytest.approx(1.0, abs=1e-3)
    assert s[2] == pytest.approx(0.5, abs=1e-3)
    inside = slice_uncertainty(prob, region=region)
    assert inside[2] == pytest.approx(1.0, abs=1e-3)  # the uncertain half is the region
    f = slice_uncertainty(prob.astype(np.float32) / 255.0)
    np.testing.assert_allclose(f, s, atol=1e-3)
    # another axial axis
    np.testing.assert_allclose(slice_uncertainty(np.moveaxis(prob, 0, 2), axial_axis=2), s)
    np.testing.assert_array_equal(most_uncertain_slices(s), [1, 2, 0])
    np.testing.assert_array_equal(most_uncertain_slices(s, 1), [1])


def test_mask_from_probability():
    p = np.array([0, 127, 128, 255], np.uint8)
    np.testing.assert_array_equal(mask_from_probability(p, 0.5), [0, 0, 1, 1])
    np.testing.assert_array_equal(mask_from_probability(p / 255.0, 0.5), [0, 0, 1, 1])
