"""npe2 reader/writer round trips with exact geometry, as napari calls them."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import nibabel as nib
import npe2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_covid_seg._reader import napari_get_reader
from napari_covid_seg.io import read_volume
from napari_covid_seg.io.orientation import napari_affine
from tests.conftest import EXAMPLE_CT, require

PLUGIN = "napari-covid-seg"


def _affine(kind: str) -> np.ndarray:
    a = np.eye(4)
    if kind == "ras":
        a[:3, :3] = np.diag([0.7, 0.8, 2.5])
    elif kind == "lps":
        a[:3, :3] = np.diag([-0.7, -0.8, 2.5])
    elif kind == "oblique":
        rot = Rotation.from_euler("xyz", [12, -7, 25], degrees=True).as_matrix()
        a[:3, :3] = rot @ np.diag([0.7, 0.8, 2.5])
    elif kind == "permuted":  # sagittal acquisition: i -> S, j -> A, k -> R
        a[:3, :3] = np.array([[0, 0, 1.5], [0, -0.9, 0], [-0.6, 0, 0]])
    a[:3, 3] = [-120.5, 33.25, -410.0]
    return a


def _ct(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 1500, size=shape).astype(np.int16)


def _save(path: Path, arr: np.ndarray, affine: np.ndarray, qcode=1, scode=2) -> Path:
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    nib.save(img, str(path))
    return path


def _codes(path: Path) -> tuple[int, int]:
    h = nib.load(str(path)).header
    return int(h["qform_code"]), int(h["sform_code"])


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique", "permuted"])
@pytest.mark.parametrize("file_shape", [(20, 18, 7), (20, 18), (20, 18, 7, 1)])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_npe2_round_trip_keeps_data_affine_and_codes(tmp_path, kind, file_shape, suffix):
    affine = _affine(kind)
    src = _save(tmp_path / f"ct{suffix}", _ct(file_shape), affine, qcode=1, scode=4)
    [(data, kw, ltype)] = npe2.read([str(src)], stack=False, plugin_name=PLUGIN)
    assert ltype == "image"
    assert data.dtype == np.int16
    # napari order (z, y, x) = NIfTI (k, j, i); 2D files become one slice.
    nifti = np.asarray(nib.load(str(src)).dataobj)
    nifti3 = nifti.reshape((*file_shape[:2], file_shape[2] if len(file_shape) > 2 else 1))
    np.testing.assert_array_equal(data, nifti3.transpose(2, 1, 0))
    np.testing.assert_allclose(kw["metadata"]["nifti"]["affine"], affine, atol=1e-5)

    # A mask painted on that layer, written through npe2 as napari's File > Save does.
    mask = (data > 500).astype(np.uint8)
    out = tmp_path / f"ct_lesions{suffix}"
    written = npe2.write(str(out), [(mask, kw, "labels")], plugin_name=PLUGIN)
    assert written == [str(out)]
    back = nib.load(str(out))
    assert back.shape == tuple(file_shape)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    assert _codes(out) == (1, 4)
    assert back.get_data_dtype() == np.uint8

    [(mdata, mkw, mtype)] = npe2.read([str(out)], stack=False, plugin_name=PLUGIN)
    assert mtype == "labels"
    np.testing.assert_array_equal(mdata, mask)
    np.testing.assert_allclose(np.asarray(mkw["metadata"]["nifti"]["affine"]), affine, atol=1e-5)


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique", "permuted"])
def test_layer_world_coordinates_are_patient_lps(tmp_path, kind):
    """Layer scale/translate/affine put every voxel at its patient position."""
    affine = _affine(kind)
    src = _save(tmp_path / "ct.nii.gz", _ct((9, 8, 7)), affine)
    [(_, kw, _)] = npe2.read([str(src)], stack=False, plugin_name=PLUGIN)
    scale = np.asarray(kw["scale"])
    translate = np.asarray(kw["translate"])
    direction = np.asarray(kw.get("affine", np.eye(4)))[:3, :3]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[::-1]
    np.testing.assert_allclose(scale, spacing, rtol=1e-6)
    for ijk in [(0, 0, 0), (8, 7, 6), (3, 5, 1)]:
        zyx = np.array(ijk[::-1], dtype=float)
        world_napari = direction @ (scale * zyx + translate)  # (S, P, L)
        ras = affine @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(world_napari, [ras[2], -ras[1], -ras[0]], atol=1e-6)
        np.testing.assert_allclose(
            napari_affine(affine) @ np.array([*zyx, 1.0]),
            [ras[2], -ras[1], -ras[0], 1.0],
            atol=1e-6,
        )


def test_scaled_ct_keeps_hounsfield_units(tmp_path):
    raw = np.arange(-5, 5, dtype=np.int16).reshape(1, 2, 5).repeat(3, axis=0)
    img = nib.Nifti1Image(raw, _affine("ras"))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    vol = read_volume(tmp_path / "scaled.nii.gz")
    assert vol.data.dtype == np.int16
    np.testing.assert_array_equal(vol.data, (raw.astype(int) * 2 - 1024).transpose(2, 1, 0))
    img.header.set_slope_inter(0.5, 0.25)
    nib.save(img, str(tmp_path / "float.nii.gz"))
    vol = read_volume(tmp_path / "float.nii.gz")
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, (raw * 0.5 + 0.25).transpose(2, 1, 0))


def test_ct_display_defaults_and_windowed_detection(tmp_path):
    _save(tmp_path / "hu.nii.gz", _ct((16, 16, 4)), _affine("lps"))
    win = np.random.default_rng(1).integers(0, 256, (16, 16, 4)).astype(np.uint8)
    _save(tmp_path / "windowed.nii.gz", win, _affine("lps"))
    [(_, kw, _)] = npe2.read([str(tmp_path / "hu.nii.gz")], stack=False, plugin_name=PLUGIN)
    assert kw["colormap"] == "gray"
    assert tuple(kw["contrast_limits"]) == (-1350.0, 150.0)
    assert kw["metadata"]["nifti"]["intensity"] == "hu"
    with pytest.warns(UserWarning, match="0..255"):
        [(_, kw, lt)] = npe2.read(
            [str(tmp_path / "windowed.nii.gz")], stack=False, plugin_name=PLUGIN
        )
    assert lt == "image"
    assert kw["metadata"]["nifti"]["intensity"] == "windowed_0_255"
    assert tuple(kw["contrast_limits"]) == (0.0, 255.0)
    assert "already windowed" in kw["metadata"]["warning"]


def test_masks_open_as_labels_by_name_or_content(tmp_path):
    m = np.zeros((10, 10, 3), dtype=np.int16)
    m[2:5, 2:5, 1] = 1
    _save(tmp_path / "case_seg.nii.gz", np.zeros((10, 10, 3), np.float32), _affine("ras"))
    _save(tmp_path / "case_labels_any.nii.gz", m, _affine("ras"))
    for name in ("case_seg.nii.gz", "case_labels_any.nii.gz"):
        [(data, _, ltype)] = npe2.read([str(tmp_path / name)], stack=False, plugin_name=PLUGIN)
        assert ltype == "labels", name
        assert data.dtype == np.uint8


def test_reader_getter_declines_other_files_fast(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"not nifti"))
    t0 = time.perf_counter()
    for p in ["a.png", "b.tif", str(tmp_path / "x.gz"), "c.nii.zip", "", ["a.nii", "b.png"]]:
        assert napari_get_reader(p) is None
    assert time.perf_counter() - t0 < 0.5
    assert napari_get_reader("a.NII.GZ") is not None


def test_real_ct_round_trip(tmp_path):
    src = require(EXAMPLE_CT)
    [(data, kw, ltype)] = npe2.read([str(src)], stack=False, plugin_name=PLUGIN)
    ref = nib.load(str(src))
    assert ltype == "image" and data.dtype == np.int16
    assert data.shape == ref.shape[::-1]
    np.testing.assert_array_equal(data, np.asarray(ref.dataobj).transpose(2, 1, 0))
    assert kw["scale"] == pytest.approx((3.0, 3.0, 3.0))
    assert -1300 < data.min() < -900 and data.max() > 1000
    mask = (data > 300).astype(np.uint8)
    out = tmp_path / "example_ct_mask.nii.gz"
    npe2.write(str(out), [(mask, kw, "labels")], plugin_name=PLUGIN)
    back = nib.load(str(out))
    np.testing.assert_array_equal(back.affine, ref.affine)
    assert _codes(out) == _codes(src)
    assert back.header.get_zooms() == ref.header.get_zooms()
    assert np.array_equal(np.asarray(back.dataobj).transpose(2, 1, 0), mask)
