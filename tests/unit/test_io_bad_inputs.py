"""Every bad input a user can open gives one clear InvalidImageError; nothing is written."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_covid_seg.errors import CovidSegError, GeometryMismatchError, InvalidImageError
from napari_covid_seg.io import read_volume, write_mask, write_volume


def _good(path: Path, shape=(16, 16, 8), dtype=np.int16) -> Path:
    arr = np.random.default_rng(0).integers(-1000, 1000, shape).astype(dtype)
    nib.save(nib.Nifti1Image(arr, np.diag([0.7, 0.7, 2.5, 1.0])), str(path))
    return path


def test_missing_empty_and_folder(tmp_path):
    with pytest.raises(InvalidImageError, match="no such file"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "empty.nii").write_bytes(b"")
    with pytest.raises(InvalidImageError, match="empty"):
        read_volume(tmp_path / "empty.nii")
    (tmp_path / "dir.nii").mkdir()
    with pytest.raises(InvalidImageError, match="folder"):
        read_volume(tmp_path / "dir.nii")


def test_truncated_plain_nii(tmp_path):
    p = _good(tmp_path / "ct.nii")
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(InvalidImageError, match="truncated"):
        read_volume(p)


def test_truncated_gz(tmp_path):
    p = _good(tmp_path / "ct.nii.gz")
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InvalidImageError, match="truncated|corrupt"):
        read_volume(p)


def test_non_nifti_content(tmp_path):
    (tmp_path / "photo.nii").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 400)
    with pytest.raises(InvalidImageError):
        read_volume(tmp_path / "photo.nii")
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"hello world" * 50))
    with pytest.raises(InvalidImageError):
        read_volume(tmp_path / "text.nii.gz")
    (tmp_path / "plain.nii.gz").write_bytes(b"not gzip at all" * 40)
    with pytest.raises(InvalidImageError):
        read_volume(tmp_path / "plain.nii.gz")


def test_true_4d_and_zero_sized(tmp_path):
    _good(tmp_path / "fmri.nii.gz", shape=(8, 8, 4, 3))
    with pytest.raises(InvalidImageError, match="4D.*time series"):
        read_volume(tmp_path / "fmri.nii.gz")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((8, 0, 4))
    nib.save(nib.Nifti1Image(np.zeros((8, 0, 4), np.int16), np.eye(4)), str(tmp_path / "z.nii"))
    with pytest.raises(InvalidImageError, match="zero-sized"):
        read_volume(tmp_path / "z.nii")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_huge_header_is_refused_before_allocating(tmp_path, suffix):
    p = _good(tmp_path / f"small{suffix}")
    img = nib.load(str(p))
    hdr = img.header.copy()
    hdr.set_data_shape((30000, 30000, 30000))
    raw = bytearray(p.read_bytes() if suffix == ".nii" else gzip.decompress(p.read_bytes()))
    raw[: hdr.sizeof_hdr] = hdr.binaryblock
    out = bytes(raw) if suffix == ".nii" else gzip.compress(bytes(raw))
    p.write_bytes(out)
    t0 = time.perf_counter()
    with pytest.raises(InvalidImageError, match="refusing to allocate|truncated"):
        read_volume(p)
    assert time.perf_counter() - t0 < 2.0


def test_gz_header_claiming_more_than_stored(tmp_path):
    p = _good(tmp_path / "ct.nii.gz", shape=(16, 16, 8))
    raw = bytearray(gzip.decompress(p.read_bytes()))
    hdr = nib.load(str(p)).header.copy()
    hdr.set_data_shape((512, 512, 300))
    raw[: hdr.sizeof_hdr] = hdr.binaryblock
    p.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InvalidImageError, match="truncated"):
        read_volume(p)


def test_writer_refuses_mismatch_and_source_overwrite(tmp_path):
    src = _good(tmp_path / "ct.nii.gz")
    vol = read_volume(src)
    before = src.read_bytes()
    with pytest.raises(GeometryMismatchError, match="does not match|does not belong"):
        write_mask(tmp_path / "bad_mask.nii.gz", np.zeros((3, 3, 3), np.uint8), vol)
    assert not (tmp_path / "bad_mask.nii.gz").exists()
    with pytest.raises(CovidSegError, match="refusing to overwrite the source"):
        write_volume(src, vol.data, vol)
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]  # no temp files left


def test_full_disk_leaves_nothing(tmp_path, monkeypatch):
    import errno

    vol = read_volume(_good(tmp_path / "ct.nii.gz"))

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", no_space)
    with pytest.raises(CovidSegError, match="disk full"):
        write_mask(tmp_path / "out" / "m.nii.gz", np.zeros_like(vol.data, np.uint8), vol)
    assert list((tmp_path / "out").iterdir()) == []


def test_written_files_get_normal_permissions(tmp_path):
    import os

    vol = read_volume(_good(tmp_path / "ct.nii.gz"))
    old = os.umask(0o022)
    try:
        out = write_mask(tmp_path / "m.nii.gz", np.zeros_like(vol.data, np.uint8), vol)
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o644  # not mkstemp's private 0o600
