"""DICOM series in: the real series against its NIfTI twin, geometry, and every bad input."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from napari_covid_seg.errors import InvalidImageError
from napari_covid_seg.io import read_volume, write_mask
from napari_covid_seg.io.dicom import (
    is_dicom_folder,
    is_dicom_path,
    list_dicom_series,
    read_dicom,
)
from tests.conftest import SHARED_DATA, require
from tests.dicom_series import (
    ACCESSION,
    PATIENT_ID,
    PATIENT_NAME,
    hu_volume,
    oblique_orientation,
    write_series,
)

DICOM_A0002 = SHARED_DATA / "chest-ct" / "dicom-A0002"
NIFTI_A0002 = SHARED_DATA / "chest-ct" / "lung_dx_a0002_chest.nii.gz"
OBLIQUE = oblique_orientation()


def _world_lps(ds: pydicom.Dataset, row: int, col: int) -> np.ndarray:
    """DICOM PS3.3 C.7.6.2.1.1: patient position (LPS mm) of pixel (row, col) of a slice."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    return np.asarray(ds.ImagePositionPatient, float) + iop[:3] * dx * col + iop[3:] * dy * row


def _assert_geometry_matches_files(vol, paths: list[Path]) -> None:
    """Every slice's voxels land where the DICOM standard puts that file's pixels."""
    by_pos = {}
    for p in paths:
        ds = pydicom.dcmread(p)
        by_pos[tuple(np.round(ds.ImagePositionPatient, 4))] = ds
    for k in range(vol.data.shape[0]):
        ras0 = vol.affine @ [0, 0, k, 1]
        lps0 = ras0[:3] * [-1, -1, 1]
        key = min(by_pos, key=lambda t: np.linalg.norm(np.asarray(t) - lps0))
        ds = by_pos[key]
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(vol.data[k], hu)
        for r, c in [(0, 0), (3, 5), (ds.Rows - 1, ds.Columns - 1)]:
            ras = vol.affine @ [c, r, k, 1]
            np.testing.assert_allclose(ras[:3] * [-1, -1, 1], _world_lps(ds, r, c), atol=1e-4)


# -- the real series ---------------------------------------------------------------
def test_real_series_equals_its_nifti_twin_voxel_for_voxel():
    folder = require(DICOM_A0002)
    twin = read_volume(require(NIFTI_A0002))
    vol = read_dicom(folder)
    assert vol.data.dtype == np.int16 == twin.data.dtype
    assert vol.data.shape == twin.data.shape == (30, 512, 512)
    np.testing.assert_array_equal(vol.data, twin.data)
    np.testing.assert_allclose(vol.affine, twin.affine, atol=1e-4)
    assert vol.spacing == pytest.approx(twin.spacing, abs=1e-6)
    assert vol.reorientation == twin.reorientation
    kw, kw_twin = vol.layer_kwargs(), twin.layer_kwargs()
    np.testing.assert_allclose(kw["scale"], kw_twin["scale"], atol=1e-6)
    np.testing.assert_allclose(kw["translate"], kw_twin["translate"], atol=1e-4)
    assert ("affine" in kw) == ("affine" in kw_twin)
    assert vol.extra["dicom"]["name"] == "dicom-A0002"
    assert vol.extra["dicom"]["files"][0] == "1-30.dcm"  # lowest slice first, not by name
    # A single file of the series opens the whole series.
    one = read_dicom(folder / "1-07.dcm")
    np.testing.assert_array_equal(one.data, twin.data)


def test_real_series_mask_written_as_nifti_lands_on_the_twin(tmp_path):
    vol = read_dicom(require(DICOM_A0002))
    twin = read_volume(require(NIFTI_A0002))
    mask = (vol.data > 200).astype(np.uint8)
    out = write_mask(tmp_path / "dicom-A0002_lesions.nii.gz", mask, like=vol)
    back = read_volume(out, as_mask=True)
    np.testing.assert_array_equal(back.data, mask)
    np.testing.assert_allclose(back.affine, twin.affine, atol=1e-4)
    raw = gzip.decompress(out.read_bytes())
    assert b"Lung_Dx-A0002" not in raw  # the patient name/ID tag value


@pytest.mark.slow
def test_segmenting_the_dicom_series_equals_segmenting_its_nifti_twin():
    """The issue's acceptance check, end to end with the bundled default model."""
    from napari_covid_seg.inference import load_predictor, segment

    folder = require(DICOM_A0002)
    twin = read_volume(require(NIFTI_A0002))
    vol = read_dicom(folder)
    predictor = load_predictor("default", device="cpu", precision="fp32")
    a = segment(vol, predictor, batch_size=8)
    b = segment(twin, predictor, batch_size=8)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.mask.shape == twin.data.shape


# -- geometry of synthetic series ------------------------------------------------------
@pytest.mark.parametrize(
    "iop",
    [
        (1, 0, 0, 0, 1, 0),  # axial, head first supine
        (-1, 0, 0, 0, -1, 0),  # axial, feet first prone
        tuple(OBLIQUE),
        (0, 1, 0, 0, 0, -1),  # sagittal
    ],
    ids=["axial", "axial-flipped", "oblique", "sagittal"],
)
def test_shuffled_names_and_instance_numbers_sort_by_position(tmp_path, iop):
    hu = hu_volume((7, 12, 10))
    n = hu.shape[0]
    rng = np.random.default_rng(1)
    perm = rng.permutation(n)
    names = [f"IM{int(perm[k]):04d}" for k in range(n)]  # no extension: found by preamble
    numbers = list(rng.permutation(n) + 1)
    paths = write_series(
        tmp_path / "s", hu, iop=iop, names=names, instance_numbers=numbers, step=2.5
    )
    vol = read_dicom(tmp_path / "s")
    assert vol.data.dtype == np.int16
    assert vol.data.shape == (7, 12, 10)
    _assert_geometry_matches_files(vol, paths)
    # Slices ascend along the normal, so the array is hu itself.
    np.testing.assert_array_equal(vol.data, hu)
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.8))


def test_reverse_stacked_series_is_flipped_into_ascending_order(tmp_path):
    hu = hu_volume((5, 8, 9))
    start = np.array([10.0, -20.0, 300.0])
    positions = start - np.outer(np.arange(5) * 3.0, [0, 0, 1])  # written top to bottom
    paths = write_series(tmp_path / "s", hu, positions=positions)
    vol = read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(vol.data, hu[::-1])
    np.testing.assert_allclose(vol.affine[:3, 3], [-10.0, 20.0, 288.0])
    _assert_geometry_matches_files(vol, paths)


def test_mask_written_from_oblique_series_keeps_geometry(tmp_path):
    hu = hu_volume((6, 10, 11))
    write_series(tmp_path / "s", hu, iop=OBLIQUE, pixel_spacing=(0.6, 0.9), step=1.25)
    vol = read_dicom(tmp_path / "s")
    out = write_mask(tmp_path / "s_lesions.nii.gz", (hu > 0).astype(np.uint8), like=vol)
    back = read_volume(out, as_mask=True)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    np.testing.assert_array_equal(back.data, hu > 0)
    assert back.header["qform_code"] == 1 and back.header["sform_code"] == 1


def test_rescale_int16_when_lossless_float32_otherwise(tmp_path):
    hu = hu_volume((3, 6, 6))
    write_series(tmp_path / "int", hu, slope=1.0, intercept=-1024.0)
    assert read_dicom(tmp_path / "int").data.dtype == np.int16
    write_series(tmp_path / "float", hu, slope=0.5, intercept=-1024.0)
    vol = read_dicom(tmp_path / "float")
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, hu, atol=0.5)


def test_single_slice_series(tmp_path):
    hu = hu_volume((1, 6, 5))
    write_series(tmp_path / "s", hu, step=5.0)
    vol = read_dicom(tmp_path / "s")
    assert vol.data.shape == (1, 6, 5)
    assert vol.spacing[0] == pytest.approx(5.0)


def test_rle_compressed_series_reads_identically(tmp_path):
    from pydicom.uid import RLELossless

    hu = hu_volume((4, 8, 8))
    paths = write_series(tmp_path / "s", hu)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless)
        ds.save_as(p)
    np.testing.assert_array_equal(read_dicom(tmp_path / "s").data, hu)


def test_jpeg2000_lossless_series_with_the_compressed_extra(tmp_path):
    pytest.importorskip("openjpeg", reason="the dicom-compressed extra is not installed")
    from pydicom.uid import JPEG2000Lossless

    hu = hu_volume((2, 64, 64))
    paths = write_series(tmp_path / "s", hu)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(JPEG2000Lossless)
        ds.save_as(p)
    np.testing.assert_array_equal(read_dicom(tmp_path / "s").data, hu)


# -- several series ------------------------------------------------------------------
def test_two_series_opens_the_largest_ct_and_lists_the_others(tmp_path):
    big, small = hu_volume((6, 8, 8), seed=1), hu_volume((3, 8, 8), seed=2)
    write_series(tmp_path / "s", big, series_number=2, names=[f"b{k}.dcm" for k in range(6)])
    write_series(
        tmp_path / "s", small, series_number=5, names=[f"a{k}.dcm" for k in range(3)], step=5
    )
    write_series(
        tmp_path / "s",
        hu_volume((8, 8, 8)),
        modality="MR",
        series_number=7,
        names=[f"m{k}.dcm" for k in range(8)],
    )
    series = list_dicom_series(tmp_path / "s")
    assert [(s.number, s.modality, len(s.files)) for s in series] == [
        (2, "CT", 6),
        (5, "CT", 3),
        (7, "MR", 8),
    ]
    vol = read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(vol.data, big)
    [note] = vol.extra["notes"]
    assert "3 series" in note and "series 5" in note and "series 7" in note
    assert vol.extra["dicom"]["name"] == "s"
    # One file of the other CT series picks that series (the choice offered in napari/CLI).
    other = read_dicom(tmp_path / "s" / "a1.dcm")
    np.testing.assert_array_equal(other.data, small)
    assert other.extra["dicom"]["name"] == "s_series5"
    with pytest.raises(InvalidImageError, match="is MR, not CT"):
        read_dicom(tmp_path / "s" / "m0.dcm")


def test_localizer_images_are_dropped_with_a_note(tmp_path):
    hu = hu_volume((4, 8, 8))
    paths = write_series(tmp_path / "s", hu)
    scout = pydicom.dcmread(paths[0])
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    scout.save_as(tmp_path / "s" / "scout.dcm")
    vol = read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(vol.data, hu)
    assert any("localizer" in n for n in vol.extra["notes"])


# -- bad inputs: one clear message each --------------------------------------------------
def _positions(n: int, step: float = 2.5) -> np.ndarray:
    return np.outer(np.arange(n) * step, [0, 0, 1.0]) + np.array([-100.0, -100.0, 50.0])


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("tilt", "gantry tilt of 15 degrees"),
        ("shifted", "shifted sideways"),
        ("gap", "slices are missing.*about 2 slice"),
        ("irregular", "irregular slice spacing"),
        ("duplicate", "share a slice position"),
        ("mixed-size", "different sizes"),
        ("mixed-orientation", "different orientations"),
        ("mixed-spacing", "different pixel spacings"),
        ("multiframe", "enhanced \\(multi-frame\\) CT"),
        ("rgb", "colour images"),
        ("mr", "is MR, not CT"),
    ],
)
def test_bad_series_raise_one_clear_error(tmp_path, case, match):
    n = 6
    hu = hu_volume((n, 8, 8))
    kw: dict = {}
    pos = _positions(n)
    if case == "tilt":
        tilt = np.deg2rad(15)
        kw["iop"] = (1, 0, 0, 0, np.cos(tilt), np.sin(tilt))
        kw["positions"] = pos  # table moves along z while the plane is tilted: sheared
        kw["gantry_tilt"] = 15.0
    elif case == "shifted":
        pos[3] += [1.5, 0, 0]
        kw["positions"] = pos
    elif case == "gap":
        kw["positions"] = np.concatenate([pos[:3], pos[3:] + np.array([0, 0, 5.0])])
    elif case == "irregular":
        pos[2, 2] += 0.6
        kw["positions"] = pos
    elif case == "duplicate":
        pos[4] = pos[3]
        kw["positions"] = pos
    elif case == "mixed-size":
        kw["sizes"] = [(8, 8)] * 5 + [(6, 8)]
    elif case in ("mixed-orientation", "mixed-spacing", "multiframe"):
        paths = write_series(tmp_path / "s", hu)
        ds = pydicom.dcmread(paths[2])
        if case == "mixed-orientation":
            ds.ImageOrientationPatient = list(OBLIQUE)
        elif case == "mixed-spacing":
            ds.PixelSpacing = [0.5, 0.5]
        else:
            ds.NumberOfFrames = 2
        ds.save_as(paths[2])
    elif case == "rgb":
        kw["rgb"] = True
    elif case == "mr":
        kw["modality"] = "MR"
    if case not in ("mixed-orientation", "mixed-spacing", "multiframe"):
        write_series(tmp_path / "s", hu, **kw)
    with pytest.raises(InvalidImageError, match=match) as err:
        read_dicom(tmp_path / "s")
    message = str(err.value)
    assert "\n" not in message
    assert PATIENT_NAME not in message and PATIENT_ID not in message


def test_dicomdir_points_to_a_series_folder(tmp_path):
    from pydicom.fileset import FileSet

    hu = hu_volume((3, 8, 8))
    paths = write_series(tmp_path / "src", hu)
    fs = FileSet()
    for p in paths:
        fs.add(pydicom.dcmread(p))
    fs.write(tmp_path / "disc")
    dicomdir = tmp_path / "disc" / "DICOMDIR"
    assert dicomdir.exists()
    for target in (dicomdir, tmp_path / "disc"):
        with pytest.raises(InvalidImageError, match=r"DICOMDIR.*Open the folder.*e\.g\. "):
            read_dicom(target)
    # The folder it points to opens.
    series_dirs = {p.parent for p in (tmp_path / "disc").rglob("*") if p.is_file()} - {
        tmp_path / "disc"
    }
    [series_dir] = series_dirs
    np.testing.assert_array_equal(read_dicom(series_dir).data, hu)


def test_other_bad_inputs(tmp_path):
    with pytest.raises(InvalidImageError, match="no such file"):
        read_dicom(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidImageError, match="no DICOM files in this folder$"):
        read_dicom(tmp_path / "empty")
    write_series(tmp_path / "empty" / "SE01", hu_volume((2, 4, 4)))
    with pytest.raises(InvalidImageError, match="subfolders hold some: open one of SE01"):
        read_dicom(tmp_path / "empty")
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 50)
    with pytest.raises(InvalidImageError, match="not a readable DICOM file"):
        read_dicom(tmp_path / "junk.dcm")
    write_series(tmp_path / "mr", hu_volume((3, 8, 8)), modality="MR")
    write_series(tmp_path / "mr", hu_volume((2, 8, 8)), modality="MR", names=["a.dcm", "b.dcm"])
    with pytest.raises(InvalidImageError, match="holds no CT series, only: series 3: MR"):
        read_dicom(tmp_path / "mr")
    paths = write_series(tmp_path / "noipp", hu_volume((3, 8, 8)))
    ds = pydicom.dcmread(paths[1])
    del ds.ImagePositionPatient
    ds.save_as(paths[1])
    with pytest.raises(InvalidImageError, match="ImagePositionPatient is missing"):
        read_dicom(tmp_path / "noipp")


def test_unreadable_file_among_a_series_is_skipped_with_a_note(tmp_path):
    hu = hu_volume((4, 8, 8))
    write_series(tmp_path / "s", hu)
    (tmp_path / "s" / "broken.dcm").write_bytes(b"garbage" * 10)
    (tmp_path / "s" / "notes.txt").write_text("hello")
    vol = read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(vol.data, hu)
    assert any("could not be read" in n and "broken.dcm" in n for n in vol.extra["notes"])


# -- no patient tags anywhere -----------------------------------------------------------
def test_no_patient_tags_in_volume_header_metadata_or_notes(tmp_path):
    write_series(tmp_path / "s", hu_volume((4, 8, 8)))
    write_series(tmp_path / "s", hu_volume((2, 8, 8)), series_number=9, names=["x.dcm", "y.dcm"])
    vol = read_dicom(tmp_path / "s")
    text = repr(vol.layer_kwargs()) + repr(vol.extra) + repr(vol.header)
    assert vol.extra["notes"]
    for secret in (PATIENT_NAME, PATIENT_ID, ACCESSION, "19500101", "Doe"):
        assert secret not in text
    blob = vol.header.binaryblock
    assert b"Doe" not in blob and b"PID" not in blob


# -- cheap detection -----------------------------------------------------------------------
def test_dicom_detection_is_cheap_and_declines_other_folders(tmp_path):
    write_series(tmp_path / "s", hu_volume((2, 4, 4)), names=["IM1", "IM2"])
    (tmp_path / "nifti").mkdir()
    (tmp_path / "nifti" / "a.nii.gz").write_bytes(b"x")
    big = tmp_path / "big"
    big.mkdir()
    for k in range(2000):
        (big / f"{k}.bin").write_bytes(b"\x00" * 200)
    t0 = time.perf_counter()
    assert is_dicom_path(tmp_path / "s")
    assert is_dicom_path(tmp_path / "s" / "IM1")
    assert not is_dicom_path(tmp_path / "nifti")
    assert not is_dicom_folder(big)
    assert not is_dicom_path(tmp_path / "nifti" / "a.nii.gz")
    assert not is_dicom_path(tmp_path / "missing")
    assert time.perf_counter() - t0 < 0.5
