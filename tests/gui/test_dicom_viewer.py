"""Open DICOM series in a real napari viewer: same layer geometry as the NIfTI twin."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, require
from tests.dicom_series import hu_volume, oblique_orientation, write_series

DICOM_A0002 = SHARED_DATA / "chest-ct" / "dicom-A0002"
NIFTI_A0002 = SHARED_DATA / "chest-ct" / "lung_dx_a0002_chest.nii.gz"


def _assert_same_placement(a, b) -> None:
    np.testing.assert_allclose(a.scale, b.scale, atol=1e-6)
    np.testing.assert_allclose(a.translate, b.translate, atol=1e-4)
    np.testing.assert_allclose(a.affine.affine_matrix, b.affine.affine_matrix, atol=1e-6)
    # The corners of the volume land on the same world points (patient LPS mm).
    shape = np.asarray(a.data.shape) - 1
    for corner in ([0, 0, 0], shape, [shape[0], 0, shape[2]]):
        np.testing.assert_allclose(a.data_to_world(corner), b.data_to_world(corner), atol=1e-4)


def test_real_dicom_folder_opens_like_its_nifti_twin(make_napari_viewer):
    folder = require(DICOM_A0002)
    viewer = make_napari_viewer()
    [dicom] = viewer.open(str(folder), plugin="napari-covid-seg")
    [nifti] = viewer.open(str(require(NIFTI_A0002)), plugin="napari-covid-seg")
    assert dicom.name == "dicom-A0002"
    np.testing.assert_array_equal(dicom.data, nifti.data)
    _assert_same_placement(dicom, nifti)
    assert tuple(dicom.contrast_limits) == (-1350.0, 150.0)
    assert [str(u) for u in dicom.units] == ["millimeter"] * 3


def test_oblique_dicom_series_and_bad_series_through_viewer(make_napari_viewer, tmp_path):
    from napari_covid_seg.io import read_dicom, write_volume

    hu = hu_volume((5, 10, 8))
    write_series(tmp_path / "case", hu, iop=oblique_orientation(), step=2.0)
    twin = write_volume(tmp_path / "twin.nii.gz", hu, like=read_dicom(tmp_path / "case"))
    viewer = make_napari_viewer()
    [dicom] = viewer.open(str(tmp_path / "case"), plugin="napari-covid-seg")
    [nifti] = viewer.open(str(twin), plugin="napari-covid-seg")
    _assert_same_placement(dicom, nifti)
    write_series(tmp_path / "mr", hu, modality="MR")
    with pytest.raises(Exception, match="is MR, not CT"):
        viewer.open(str(tmp_path / "mr"), plugin="napari-covid-seg")
    assert len(viewer.layers) == 2
