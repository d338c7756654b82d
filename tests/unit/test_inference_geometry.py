"""Masks land on the source voxels and carry the source affine, whatever the file orientation."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from napari_covid_seg.inference.engine import segment
from napari_covid_seg.io import Volume, read_volume, write_mask, write_volume
from napari_covid_seg.io.orientation import REVERSE, from_canonical, to_canonical
from napari_covid_seg.io.phantom import make_phantom


class GGOStandIn(torch.nn.Module):
    """Logit > 0 where the lung-windowed intensity is ground-glass (HU -720..-380)."""

    preprocessing: ClassVar[dict] = {"input_size": None, "n_channels": 1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = (-720 + 1350) / 1500, (-380 + 1350) / 1500
        v = x[:, :1]
        return 400 * torch.minimum(v - lo, hi - v)


class AnteriorRightQuadrant(torch.nn.Module):
    """Ignores the image: marks the top-left quarter of every slice it is shown.

    Shown canonical slices (anterior up, patient right on the left) it marks
    the anterior-right quarter of the patient in every orientation.
    """

    preprocessing: ClassVar[dict] = {"input_size": 64, "n_channels": 1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out = torch.full((n, 1, h, w), -10.0)
        out[:, :, : h // 2, : w // 2] = 10.0
        return out


def reindexed(vol: Volume, perm: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> Volume:
    """The same patient stored with another axis order: ``new = flip(transpose(old, perm))``.

    The affine is rebuilt so every voxel keeps its world position.
    """
    data = np.transpose(vol.data, perm)
    for ax, f in enumerate(flips):
        if f:
            data = np.flip(data, axis=ax)
    data = np.ascontiguousarray(data)
    # old zyx index = M @ new zyx index (homogeneous)
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    for new_ax, old_ax in enumerate(perm):
        if flips[new_ax]:
            m[old_ax, new_ax] = -1.0
            m[old_ax, 3] = data.shape[new_ax] - 1
        else:
            m[old_ax, new_ax] = 1.0
    affine = vol.affine @ REVERSE @ m @ REVERSE
    return Volume(data=data, affine=affine, intensity=vol.intensity)


def rotated(vol: Volume, degrees: float) -> Volume:
    """An oblique acquisition: the same voxels, the affine rotated about the S axis."""
    t = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return Volume(data=vol.data, affine=rot @ vol.affine, intensity=vol.intensity)


def world_points(vol: Volume, mask: np.ndarray) -> np.ndarray:
    """RAS mm of the nonzero voxels of a (z, y, x) mask, sorted rows."""
    zyx = np.argwhere(mask > 0)
    ijk1 = np.c_[zyx[:, ::-1], np.ones(len(zyx))]
    pts = (vol.affine @ ijk1.T).T[:, :3]
    return pts[np.lexsort(pts.T[::-1])]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(16, 80, 80), seed=3)


ORIENTATIONS = {
    "LPS (as made)": ((0, 1, 2), (False, False, False)),
    "RAS": ((0, 1, 2), (False, True, True)),
    "IPR (upside down, x flipped)": ((0, 1, 2), (True, False, True)),
    "sagittal-stored (x, z, y)": ((2, 0, 1), (False, True, False)),
    "coronal-stored (y, z, x)": ((1, 0, 2), (True, False, False)),
}


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_mask_on_source_voxels_with_source_affine(phantom, tmp_path, name):
    img, truth = phantom
    perm, flips = ORIENTATIONS[name]
    vimg = reindexed(img, perm, flips)
    vtruth = reindexed(truth, perm, flips)
    vggo = reindexed(truth.with_data(truth.extra["lesion_types"]), perm, flips).data == 1
    # the rebuilt affine really keeps every voxel at its world position
    np.testing.assert_allclose(world_points(vtruth, vtruth.data), world_points(truth, truth.data))
    ref = segment(img, GGOStandIn(), batch_size=5)
    res = segment(vimg, GGOStandIn(), batch_size=5)
    # same patient, same prediction, voxel for voxel in world space
    assert res.mask.shape == vimg.data.shape
    np.testing.assert_allclose(world_points(vimg, res.mask), world_points(img, ref.mask))
    inter = np.count_nonzero((res.mask > 0) & vggo)
    assert 2 * inter / (res.mask.sum() + vggo.sum()) > 0.9
    # written with the input's geometry
    src = write_volume(tmp_path / "ct.nii.gz", vimg.data, like=vimg)
    back = read_volume(src)
    out = write_mask(tmp_path / "ct_lesions.nii.gz", segment(back, GGOStandIn()).mask, like=back)
    mask_file = read_volume(out)
    np.testing.assert_allclose(mask_file.affine, vimg.affine, atol=1e-5)
    np.testing.assert_array_equal(mask_file.data, res.mask)
    # uncertainty is indexed along the source axial axis
    assert res.uncertainty.shape == (vimg.data.shape[res.axial_axis],)


def test_slices_are_presented_anterior_up_right_on_left(phantom):
    img, _ = phantom
    for name, (perm, flips) in ORIENTATIONS.items():
        vol = reindexed(img, perm, flips)
        res = segment(vol, AnteriorRightQuadrant(), lungs=False, restrict_to_lungs=False)
        pts = world_points(vol, res.mask)
        center = world_points(vol, np.ones_like(res.mask)).mean(axis=0)
        # RAS: anterior = +y, patient right = +x
        assert np.all(pts[:, 0] > center[0]), name
        assert np.all(pts[:, 1] > center[1]), name
        assert res.mask.mean() == pytest.approx(0.25, abs=0.02), name


def test_oblique_affine_kept_and_mask_unchanged(phantom, tmp_path):
    img, _ = phantom
    ref = segment(img, GGOStandIn())
    for deg in (15.0, -30.0):
        obl = rotated(img, deg)
        assert obl.reorientation == img.reorientation  # nearest canonical axes unchanged
        res = segment(obl, GGOStandIn())
        np.testing.assert_array_equal(res.mask, ref.mask)
        path = write_mask(tmp_path / f"obl{deg}_lesions.nii.gz", res.mask, like=obl)
        np.testing.assert_allclose(read_volume(path).affine, obl.affine, atol=1e-5)


def test_asymmetric_marker_round_trip(phantom):
    """canonical -> predict -> back: a marker returns to exactly the source voxels."""
    img, _ = phantom
    for perm, flips in ORIENTATIONS.values():
        vol = reindexed(img, perm, flips)
        data = np.full(vol.data.shape, -1000, dtype=np.int16)
        marker = np.zeros(vol.data.shape, dtype=bool)
        # an L-shaped blob near one corner: no symmetry to hide a flip or transpose
        marker[2:5, 3:12, 4:7] = True
        marker[2:5, 3:6, 4:15] = True
        data[marker] = -550
        r = vol.reorientation
        assert not np.array_equal(to_canonical(marker, r), marker) or r.is_identity
        np.testing.assert_array_equal(from_canonical(to_canonical(marker, r), r), marker)
        res = segment(vol.with_data(data), GGOStandIn(), lungs=False, restrict_to_lungs=False)
        np.testing.assert_array_equal(res.mask > 0, marker)


def test_plain_arrays_are_segmented_as_displayed():
    """A 2D array has no geometry: the model sees it as napari displays it."""
    image = np.zeros((64, 96), np.int16)
    res = segment(image, AnteriorRightQuadrant(), lungs=False, restrict_to_lungs=False)
    expected = np.zeros((1, 64, 96), np.uint8)
    expected[0, :32, :48] = 1
    np.testing.assert_array_equal(res.mask, expected)
