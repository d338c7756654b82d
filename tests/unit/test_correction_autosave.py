"""Autosave: image fingerprint, atomic round trip, corrupt files, throttle."""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_covid_seg.correction import (
    AutosaveStore,
    Throttle,
    default_autosave_root,
    fingerprint,
)


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(-1024, 400, (6, 32, 40)).astype(np.int16)


def _affine() -> np.ndarray:
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-120.0, 80.0, 30.0]
    return affine


def test_fingerprint_is_stable_and_sensitive():
    image, affine = _image(), _affine()
    fp = fingerprint(image, affine)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fingerprint(image.copy(), affine.copy()) == fp
    changed = image.copy()
    changed[5, 31, 39] += 1  # one voxel, the very last byte region
    assert fingerprint(changed, affine) != fp
    moved = affine.copy()
    moved[0, 3] += 0.5
    assert fingerprint(image, moved) != fp
    assert fingerprint(image.astype(np.int32), affine) != fp
    assert fingerprint(image.reshape(6, 40, 32), affine) != fp
    assert fingerprint(image) != fp
    # A non-contiguous view hashes like its contiguous copy.
    view = np.zeros((6, 32, 80), np.int16)[:, :, ::2]
    view[...] = image
    assert fingerprint(view, affine) == fp


def test_save_load_round_trip(tmp_path):
    store = AutosaveStore(tmp_path / "autosave")
    image, affine = _image(), _affine()
    fp = fingerprint(image, affine)
    assert store.load(fp) is None
    mask = np.zeros(image.shape, np.uint8)
    mask[2:4, 10:20, 5:9] = 1
    mask[5, 31, 39] = 2
    meta = {"reviewed_slices": [1, 3], "model_version": "default-1.0"}
    path = store.save(fp, mask, meta)
    assert path.parent == tmp_path / "autosave"
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{fp}.npz"]  # no temp left
    loaded = store.load(fp)
    assert loaded is not None
    loaded_mask, loaded_meta = loaded
    np.testing.assert_array_equal(loaded_mask, mask)
    assert loaded_mask.dtype == np.uint8
    assert loaded_meta["reviewed_slices"] == [1, 3]
    assert loaded_meta["model_version"] == "default-1.0"
    assert isinstance(loaded_meta["saved_at"], float)

    mask[0, 0, 0] = 1  # a second save replaces the first
    store.save(fp, mask, meta)
    np.testing.assert_array_equal(store.load(fp)[0], mask)

    empty = np.zeros((3, 4, 5), np.int32)
    fp2 = fingerprint(empty)
    store.save(fp2, empty, {})
    np.testing.assert_array_equal(store.load(fp2)[0], empty)
    assert store.load(fp2)[0].dtype == np.int32

    assert store.discard(fp)
    assert not store.exists(fp)
    assert store.load(fp) is None
    assert not store.discard(fp)


def test_corrupt_files_warn_and_return_none(tmp_path):
    store = AutosaveStore(tmp_path)
    fp = fingerprint(_image(), _affine())
    store.path(fp).write_bytes(b"not a zip file at all")
    with pytest.warns(UserWarning, match="unreadable autosave"):
        assert store.load(fp) is None
    mask = np.ones((2, 3, 4), np.uint8)
    store.save(fp, mask, {})
    data = store.path(fp).read_bytes()
    store.path(fp).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(UserWarning):
        assert store.load(fp) is None
    flipped = bytearray(data)
    for i in range(len(data) // 3, len(data) // 3 + 40):
        flipped[i] ^= 0xFF  # bit rot inside the compressed stream
    store.path(fp).write_bytes(bytes(flipped))
    with pytest.warns(UserWarning):
        assert store.load(fp) is None
    np.savez(store.path(fp), something=np.arange(3))  # a foreign npz
    with pytest.warns(UserWarning):
        assert store.load(fp) is None


def test_fingerprint_names_are_validated(tmp_path):
    store = AutosaveStore(tmp_path)
    with pytest.raises(ValueError, match="fingerprint"):
        store.path("../../etc/passwd")


def test_default_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_COVID_SEG_HOME", str(tmp_path))
    assert default_autosave_root() == tmp_path / "autosave"
    assert AutosaveStore().root == tmp_path / "autosave"
    monkeypatch.delenv("NAPARI_COVID_SEG_HOME")
    root = default_autosave_root()
    assert root.name == "autosave" and "napari-covid-seg" in str(root)


def test_throttle_with_fake_clock():
    now = [100.0]
    throttle = Throttle(5.0, clock=lambda: now[0])
    assert throttle.due()
    throttle.mark()
    assert not throttle.due()
    now[0] += 4.9
    assert not throttle.due()
    now[0] += 0.1
    assert throttle.due()
    throttle.mark()
    assert not throttle.due()
    throttle.reset()
    assert throttle.due()


def test_save_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    store = AutosaveStore(tmp_path)
    fp = fingerprint(_image())
    store.save(fp, np.ones((2, 2, 2), np.uint8), {"n": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.save(fp, np.zeros((2, 2, 2), np.uint8), {"n": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{fp}.npz"]
    mask, meta = store.load(fp)
    assert mask.sum() == 8 and meta["n"] == 1  # the previous autosave survives
