"""Open the sample CT and NIfTI files in a real napari viewer."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_covid_seg.io.phantom import make_phantom


def test_sample_ct_opens_with_geometry_and_lung_window(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)  # hidden canvases screenshot black
    layers = viewer.open_sample("napari-covid-seg", "chest_ct")
    image = viewer.layers["sample CT"]
    truth = viewer.layers["sample CT truth"]
    assert len(layers) == 2
    assert image.data.dtype == np.int16
    np.testing.assert_allclose(image.scale, (2.5, 1.4, 1.4))
    np.testing.assert_allclose(truth.scale, image.scale)
    np.testing.assert_allclose(truth.translate, image.translate)
    ref, _ = make_phantom()
    # napari world (S, P, L) of voxel (0, 0, 0) from the phantom's RAS affine.
    ras0 = ref.affine @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(image.translate, [ras0[2], -ras0[1], -ras0[0]])
    assert tuple(image.contrast_limits) == (-1350.0, 150.0)
    assert [str(u) for u in image.units] == ["millimeter"] * 3
    viewer.dims.set_point(0, image.translate[0] + 24 * 2.5)
    shot = viewer.screenshot(path=str(tmp_path / "sample.png"), canvas_only=True)
    assert shot.ndim == 3 and shot.shape[2] == 4
    gray = shot[..., :3].mean(axis=2)
    assert gray.std() > 20  # lungs, body and air are visible, not a blank canvas


def test_open_nifti_and_bad_file_through_viewer(make_napari_viewer, tmp_path):
    arr = np.random.default_rng(0).integers(-1000, 400, (32, 30, 6)).astype(np.int16)
    affine = np.diag([-0.8, -0.8, 3.0, 1.0])
    nib.save(nib.Nifti1Image(arr, affine), str(tmp_path / "case.nii.gz"))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "case.nii.gz"), plugin="napari-covid-seg")
    assert layer.data.shape == (6, 30, 32)
    np.testing.assert_allclose(layer.scale, (3.0, 0.8, 0.8))
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    with pytest.raises(Exception, match="broken.nii.gz"):
        viewer.open(str(tmp_path / "broken.nii.gz"), plugin="napari-covid-seg")
    assert len(viewer.layers) == 1
