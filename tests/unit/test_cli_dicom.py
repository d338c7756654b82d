"""``segment`` with DICOM inputs: folder naming, grid, mixed inputs, ``--dicom-seg``."""

from __future__ import annotations

import sys

import numpy as np
import pydicom
import pytest
import torch

from napari_covid_seg import cli
from napari_covid_seg._commands.segment import expand_inputs
from napari_covid_seg.io import read_dicom, read_dicom_seg, read_volume, write_volume
from napari_covid_seg.io.phantom import make_phantom
from tests.dicom_series import PATIENT_ID, PATIENT_NAME, write_series


class GGOStandIn(torch.nn.Module):
    """Logit > 0 where the lung-windowed intensity is ground-glass (HU -720..-380)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = (-720 + 1350) / 1500, (-380 + 1350) / 1500
        v = x[:, :1]
        return 400 * torch.minimum(v - lo, hi - v)


@pytest.fixture
def stand_in(monkeypatch):
    from napari_covid_seg.inference import engine

    def predictor(model, **kw):
        return engine.Predictor(GGOStandIn(), {"input_size": None}, device=kw["device"])

    monkeypatch.setattr(engine, "load_predictor", predictor)


@pytest.fixture
def case(tmp_path):
    """A phantom CT as a DICOM series folder ``patient-01`` and as its NIfTI twin."""
    image, _ = make_phantom(shape=(8, 64, 64), seed=0)
    folder = tmp_path / "in" / "patient-01"
    names = [f"{(k * 5) % 8:02d}.dcm" for k in range(8)]  # names do not follow the slices
    write_series(folder, image.data, pixel_spacing=(1.4, 1.4), step=2.5, names=names)
    vol = read_dicom(folder)
    twin = write_volume(tmp_path / "in" / "twin.nii.gz", vol.data, like=vol)
    return folder, twin


def run_cli(*args) -> int:
    return cli.main(["segment", *map(str, args), "-q", "--device", "cpu"])


def test_dicom_folder_among_other_inputs_gives_the_nifti_twins_mask(
    case, stand_in, tmp_path, capsys
):
    folder, twin = case
    out = tmp_path / "out"
    assert run_cli(folder, twin, "-o", out, "--dicom-seg") == 0
    err = capsys.readouterr().err
    assert "twin is not a DICOM series: no DICOM-SEG written" in err
    assert {"patient-01_lesions.dcm", "patient-01_lesions.nii.gz", "twin_lesions.nii.gz"} <= {
        p.name for p in out.iterdir()
    }
    a = read_volume(out / "patient-01_lesions.nii.gz")
    b = read_volume(out / "twin_lesions.nii.gz")
    assert a.data.sum() > 0
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(a.affine, read_dicom(folder).affine, atol=1e-6)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)
    # The DICOM-SEG holds the same mask on the same grid and references the series.
    seg = read_dicom_seg(out / "patient-01_lesions.dcm")
    np.testing.assert_array_equal(seg.data, a.data)
    np.testing.assert_allclose(seg.affine, a.affine, atol=1e-6)
    ds = pydicom.dcmread(out / "patient-01_lesions.dcm")
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == read_dicom(folder).extra["dicom"]["series_instance_uid"]
    assert len(ref.ReferencedInstanceSequence) == 8
    # Nothing patient-identifying in the NIfTI masks or on the console.
    assert PATIENT_NAME not in err and PATIENT_ID not in err
    raw = (out / "patient-01_lesions.nii.gz").read_bytes()
    assert PATIENT_ID.encode() not in raw


def test_folder_with_dicom_and_nifti_expands_to_both(case):
    folder, twin = case
    (folder / twin.name).write_bytes(twin.read_bytes())
    files, notes = expand_inputs([str(folder)])
    assert files == [folder / "twin.nii.gz", folder]
    assert not notes
    empty = folder.parent / "empty"
    empty.mkdir()
    files, notes = expand_inputs([str(empty)])
    assert files == [] and "no NIfTI (.nii, .nii.gz) or DICOM files" in notes[0]


def test_one_dcm_file_means_its_series_and_bad_series_fail_clearly(
    case, stand_in, tmp_path, capsys
):
    folder, _ = case
    bad = tmp_path / "in" / "mr"
    write_series(bad, np.zeros((3, 8, 8), np.int16), modality="MR")
    out = tmp_path / "out"
    assert run_cli(folder / "03.dcm", bad, "-o", out) == 1
    err = capsys.readouterr().err
    assert "is MR, not CT" in err and "1 of 2 input(s) failed" in err
    written = {p.name for p in out.iterdir()}
    assert "patient-01_lesions.nii.gz" in written
    assert not any(name.startswith("mr") for name in written)


def test_dicom_seg_without_highdicom_says_how_to_install(case, stand_in, tmp_path, monkeypatch):
    folder, _ = case
    monkeypatch.setitem(sys.modules, "highdicom", None)
    out = tmp_path / "out"
    assert run_cli(folder, "-o", out, "--dicom-seg") == 1
    assert not out.exists() or not any(out.iterdir())
