"""npe2 reader/writer for DICOM: folders and .dcm files in, DICOM-SEG out, as napari calls them."""

from __future__ import annotations

import time

import npe2
import numpy as np
import pydicom
import pytest

from napari_covid_seg._reader import napari_get_reader, read_dicom_layers
from napari_covid_seg.io import Volume, read_dicom, read_volume
from tests.conftest import SHARED_DATA, require
from tests.dicom_series import (
    PATIENT_ID,
    PATIENT_NAME,
    hu_volume,
    oblique_orientation,
    write_series,
)

PLUGIN = "napari-covid-seg"
DICOM_A0002 = SHARED_DATA / "chest-ct" / "dicom-A0002"
NIFTI_A0002 = SHARED_DATA / "chest-ct" / "lung_dx_a0002_chest.nii.gz"


def _geometry(kw: dict) -> tuple:
    return (
        np.asarray(kw["scale"]),
        np.asarray(kw["translate"]),
        np.asarray(kw.get("affine", np.eye(4))),
        np.asarray(kw["metadata"]["nifti"]["affine"]),
    )


def test_real_folder_and_file_open_like_the_nifti_twin():
    folder = require(DICOM_A0002)
    [(twin_data, twin_kw, _)] = npe2.read(
        [str(require(NIFTI_A0002))], stack=False, plugin_name=PLUGIN
    )
    for path in (folder, folder / "1-12.dcm"):
        [(data, kw, ltype)] = npe2.read([str(path)], stack=False, plugin_name=PLUGIN)
        assert ltype == "image" and data.dtype == np.int16
        assert kw["name"] == "dicom-A0002"
        np.testing.assert_array_equal(data, twin_data)
        for a, b in zip(_geometry(kw), _geometry(twin_kw), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)
        assert kw["contrast_limits"] == twin_kw["contrast_limits"]
        assert "Lung_Dx-A0002" not in repr(kw["metadata"])
        # What the Segment widget rebuilds from the layer is the twin's Volume, so the
        # masks are the same voxel for voxel (the engine itself is compared in unit/).
        vol = Volume.from_metadata(data, kw["metadata"])
        twin = Volume.from_metadata(twin_data, twin_kw["metadata"])
        np.testing.assert_allclose(vol.affine, twin.affine, atol=1e-4)
        assert vol.reorientation == twin.reorientation
        assert vol.extra["dicom"]["files"][0] == "1-30.dcm"


def test_oblique_series_layer_and_several_files_open_once(tmp_path):
    hu = hu_volume((5, 9, 7))
    paths = write_series(tmp_path / "case", hu, iop=oblique_orientation(), step=1.5)
    vol = read_dicom(tmp_path / "case")
    [(data, kw, _)] = npe2.read([str(tmp_path / "case")], stack=False, plugin_name=PLUGIN)
    np.testing.assert_array_equal(data, hu)
    assert "affine" in kw  # oblique: the direction cosines travel as the layer affine
    expected = vol.layer_kwargs()
    np.testing.assert_allclose(kw["scale"], expected["scale"])
    np.testing.assert_allclose(kw["translate"], expected["translate"])
    np.testing.assert_allclose(kw["affine"], expected["affine"])
    # Several files of one series (napari's stacked open) make one layer.
    layers = read_dicom_layers([str(p) for p in paths])
    assert len(layers) == 1


def test_getter_claims_dicom_declines_the_rest_fast(tmp_path):
    write_series(tmp_path / "dcm", hu_volume((2, 4, 4)), names=["IM1", "IM2"])
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "readme.txt").write_text("no images here")
    (tmp_path / "other.dcm.txt").write_text("x")
    t0 = time.perf_counter()
    assert napari_get_reader(str(tmp_path / "dcm")) is read_dicom_layers
    assert napari_get_reader(str(tmp_path / "dcm" / "IM1")) is read_dicom_layers
    assert napari_get_reader("anything.DCM") is read_dicom_layers
    for p in [str(tmp_path / "plain"), str(tmp_path / "other.dcm.txt"), "a.png", ""]:
        assert napari_get_reader(p) is None
    assert napari_get_reader([str(tmp_path / "dcm"), "b.nii.gz"]) is None
    assert time.perf_counter() - t0 < 0.5
    readers = npe2.PluginManager.instance().iter_compatible_readers([str(tmp_path / "dcm")])
    assert PLUGIN in {r.plugin_name for r in readers}


def test_other_series_become_a_warning_and_bad_series_one_error(tmp_path):
    write_series(tmp_path / "s", hu_volume((4, 6, 6)), series_number=1)
    write_series(tmp_path / "s", hu_volume((2, 6, 6)), series_number=2, names=["x.dcm", "y.dcm"])
    with pytest.warns(UserWarning, match="holds 2 series.*series 2") as record:
        [(data, _, _)] = npe2.read([str(tmp_path / "s")], stack=False, plugin_name=PLUGIN)
    assert data.shape[0] == 4
    assert all(PATIENT_NAME not in str(w.message) for w in record)
    write_series(tmp_path / "mr", hu_volume((3, 6, 6)), modality="MR")
    with pytest.raises(Exception, match="is MR, not CT"):
        npe2.read([str(tmp_path / "mr")], stack=False, plugin_name=PLUGIN)


def test_labels_saved_as_dicom_seg_and_opened_back(tmp_path):
    pytest.importorskip("highdicom")
    hu = hu_volume((5, 12, 10))
    write_series(tmp_path / "case", hu, iop=oblique_orientation(), step=2.0)
    [(data, kw, _)] = npe2.read([str(tmp_path / "case")], stack=False, plugin_name=PLUGIN)
    mask = np.zeros(data.shape, np.uint8)
    mask[1:4, 2:8, 3:7] = 1
    labels_kw = {"scale": kw["scale"], "translate": kw["translate"], "affine": kw["affine"]}
    labels_kw["metadata"] = {"nifti": kw["metadata"]["nifti"], "covid_seg": {"prediction": mask}}
    out = tmp_path / "out" / "case_lesions.dcm"
    written = npe2.write(str(out), [(mask, labels_kw, "labels")], plugin_name=PLUGIN)
    assert written == [str(out)]
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert not list(out.parent.glob(".*"))  # atomic: no temp file left behind
    [(back, back_kw, ltype)] = npe2.read([str(out)], stack=False, plugin_name=PLUGIN)
    assert ltype == "labels" and back_kw["name"] == "case_lesions"
    np.testing.assert_array_equal(back, mask)
    for a, b in zip(_geometry(back_kw)[:3], _geometry(kw)[:3], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # The NIfTI writer still works for the same layer, with the same geometry.
    nii = tmp_path / "out" / "case_lesions.nii.gz"
    npe2.write(str(nii), [(mask, labels_kw, "labels")], plugin_name=PLUGIN)
    np.testing.assert_allclose(read_volume(nii).affine, read_dicom(tmp_path / "case").affine)
    assert PATIENT_ID.encode() not in nii.read_bytes()


def test_dicom_seg_of_a_layer_without_dicom_source_is_refused(tmp_path):
    pytest.importorskip("highdicom")
    mask = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(Exception, match="not read from a DICOM series"):
        npe2.write(str(tmp_path / "m.dcm"), [(mask, {}, "labels")], plugin_name=PLUGIN)
