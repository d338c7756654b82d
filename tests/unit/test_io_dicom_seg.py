"""DICOM-SEG out and back: grid, references, labels, refusals."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pydicom
import pytest

from napari_covid_seg.errors import CovidSegError, GeometryMismatchError, InvalidImageError
from napari_covid_seg.io import Volume, read_dicom, read_dicom_seg
from tests.conftest import SHARED_DATA, require
from tests.dicom_series import PATIENT_NAME, hu_volume, oblique_orientation, write_series

hd = pytest.importorskip("highdicom", reason="the dicom-seg extra (highdicom) is not installed")

from napari_covid_seg.io.dicom_seg import write_dicom_seg  # noqa: E402

DICOM_A0002 = SHARED_DATA / "chest-ct" / "dicom-A0002"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture
def series(tmp_path):
    hu = hu_volume((6, 12, 10))
    write_series(tmp_path / "case", hu, iop=oblique_orientation(), pixel_spacing=(0.6, 0.9))
    return read_dicom(tmp_path / "case")


def _mask(shape, labels=(1,)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    for i, v in enumerate(labels):
        m[1 + i : 4 + i, 2:7, 3 + i : 8] = v
    return m


def test_real_series_round_trip(tmp_path):
    vol = read_dicom(require(DICOM_A0002))
    mask = _mask(vol.data.shape)
    mask[12:20, 200:320, 100:400] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_dicom_seg(tmp_path / "A0002_lesions.dcm", mask, like=vol)
    assert not any("Lung_Dx" in str(w.message) for w in caught)  # no patient name in logs
    back = read_dicom_seg(out)
    assert back.is_mask and back.data.dtype == np.uint8
    np.testing.assert_array_equal(back.data, mask)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == SEG_CLASS and ds.SegmentationType == "BINARY"
    assert int(ds.NumberOfFrames) == 30
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == vol.extra["dicom"]["series_instance_uid"]
    assert {r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence} == set(
        vol.extra["dicom"]["sop_instance_uids"]
    )
    assert ds.StudyInstanceUID == vol.extra["dicom"]["study_instance_uid"]
    assert ds.FrameOfReferenceUID == vol.extra["dicom"]["frame_of_reference_uid"]


def test_oblique_series_round_trip_and_read_through_read_dicom(series, tmp_path):
    mask = _mask(series.data.shape)
    out = write_dicom_seg(tmp_path / "out" / "case_lesions", mask, like=series)
    assert out.name == "case_lesions.dcm"
    assert sorted(p.name for p in out.parent.iterdir()) == ["case_lesions.dcm"]  # atomic
    for back in (read_dicom_seg(out), read_dicom(out)):
        np.testing.assert_array_equal(back.data, mask)
        np.testing.assert_allclose(back.affine, series.affine, atol=1e-6)
        assert back.is_mask
    ds = pydicom.dcmread(out)
    seg = ds.SegmentSequence[0]
    assert seg.SegmentLabel == "Lesion" and seg.SegmentAlgorithmType == "AUTOMATIC"
    assert seg.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert ds.Modality == "SEG"
    # The SEG placed in the series folder is listed but not chosen over the CT.
    (series.source_path / "seg.dcm").write_bytes(out.read_bytes())
    again = read_dicom(series.source_path)
    np.testing.assert_array_equal(again.data, series.data)
    assert any("SEG" in note for note in again.extra["notes"])


def test_several_labels_become_segments_and_empty_masks_still_write(series, tmp_path):
    mask = _mask(series.data.shape, labels=(1, 3))
    out = write_dicom_seg(tmp_path / "multi.dcm", mask, like=series, algorithm_type="MANUAL")
    ds = pydicom.dcmread(out)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["Lesion", "Lesion 2"]
    assert int(ds.NumberOfFrames) == 2 * series.data.shape[0]
    back = read_dicom_seg(out).data
    np.testing.assert_array_equal(back, np.where(mask == 3, 2, mask))
    empty = write_dicom_seg(tmp_path / "empty.dcm", np.zeros_like(mask), like=series)
    back = read_dicom_seg(empty)
    assert back.data.shape == series.data.shape and not back.data.any()


def test_seg_that_omits_empty_frames_lands_on_the_right_slices(series, tmp_path):
    from napari_covid_seg.io.dicom import source_datasets

    mask = np.zeros(series.data.shape, np.uint8)
    mask[2, 3:6, 2:5] = 1
    mask[4, 1:3, 1:3] = 1  # slice 3 empty: a gap the reader must keep
    sources = source_datasets(series)
    for ds in sources:
        ds.PatientSex = ""  # highdicom needs it; our writer fills it (the series has none)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type="BINARY",
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="x",
                segmented_property_category=pydicom.sr.codedict.codes.SCT.Tissue,
                segmented_property_type=pydicom.sr.codedict.codes.SCT.Lesion,
                algorithm_type="MANUAL",
            )
        ],
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
        omit_empty_frames=True,
    )
    seg.save_as(tmp_path / "sparse.dcm")
    back = read_dicom_seg(tmp_path / "sparse.dcm")
    np.testing.assert_array_equal(back.data, mask[2:5])
    # Voxel (i, j, k) of the sparse SEG is voxel (i, j, k + 2) of the series.
    np.testing.assert_allclose(back.affine @ [1, 2, 0, 1], series.affine @ [1, 2, 2, 1], atol=1e-6)


def test_refusals(series, tmp_path, monkeypatch):
    mask = _mask(series.data.shape)
    with pytest.raises(GeometryMismatchError, match="does not match"):
        write_dicom_seg(tmp_path / "x.dcm", mask[:-1], like=series)
    src = series.source_path / series.extra["dicom"]["files"][0]
    with pytest.raises(CovidSegError, match="refusing to overwrite"):
        write_dicom_seg(src, mask, like=series)
    plain = Volume(data=series.data, affine=series.affine)
    with pytest.raises(InvalidImageError, match="not read from a DICOM series"):
        write_dicom_seg(tmp_path / "x.dcm", mask, like=plain)
    (series.source_path / series.extra["dicom"]["files"][2]).unlink()
    with pytest.raises(InvalidImageError, match="cannot be read any more"):
        write_dicom_seg(tmp_path / "x.dcm", mask, like=series)
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(CovidSegError, match=r"pip install 'napari-covid-seg\[dicom-seg\]'"):
        write_dicom_seg(tmp_path / "x.dcm", mask, like=series)
    assert not list(tmp_path.glob("x*"))
    assert not list(tmp_path.glob(".x*"))


def test_reading_a_non_seg_as_seg_is_refused(series):
    src = series.source_path / series.extra["dicom"]["files"][0]
    with pytest.raises(InvalidImageError, match="not a DICOM-SEG"):
        read_dicom_seg(src)
    assert PATIENT_NAME not in repr(series.extra)
