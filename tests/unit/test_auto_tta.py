"""Test-time flips turn on by themselves for noisy scans (auto mode), and say so."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_seg.inference import segment
from napari_covid_seg.inference.intensity import AUTO_TTA_NOISE_HU, lung_noise_hu
from napari_covid_seg.io.orientation import to_canonical
from napari_covid_seg.io.phantom import make_phantom


@pytest.fixture(scope="module")
def scans():
    img, truth = make_phantom(shape=(12, 160, 160), spacing=(5.0, 1.8, 1.8), seed=3)
    rng = np.random.default_rng(0)
    noisy = img.with_data(
        np.clip(img.data + rng.normal(0.0, 90.0, img.data.shape), -1024, 3071).astype(np.int16)
    )
    return img, noisy, truth


def test_lung_noise_tells_a_soft_kernel_from_a_noisy_one(scans):
    img, noisy, truth = scans
    r = img.reorientation
    lungs = to_canonical(truth.extra["lungs"], r)
    clean = lung_noise_hu(to_canonical(img.data, r), lungs)
    loud = lung_noise_hu(to_canonical(noisy.data, r), lungs)
    assert clean is not None and loud is not None
    assert clean < AUTO_TTA_NOISE_HU < loud
    # white noise of sd 90 leaves 0.94 x 90 in a 3 x 3 residual, on top of the phantom's texture
    assert 0.8 * 90.0 < loud < 1.3 * 90.0
    # 0..255 lung-windowed input reports HU too
    v = np.clip((to_canonical(noisy.data, r) + 1350.0) * 255.0 / 1500.0, 0, 255)
    assert lung_noise_hu(v.astype(np.float32), lungs, "windowed_0_255") == pytest.approx(
        loud, rel=0.1
    )
    assert lung_noise_hu(to_canonical(img.data, r), np.zeros_like(lungs)) is None


def test_auto_mode_flips_noisy_scans_only_and_explicit_choices_win(scans):
    img, noisy, _ = scans
    quiet = segment(img, "default", device="cpu")
    assert quiet.tta["mode"] == "auto" and quiet.tta["on"] is False
    assert quiet.tta["lung_noise_hu"] < AUTO_TTA_NOISE_HU
    loud = segment(noisy, "default", device="cpu")
    assert loud.tta["mode"] == "auto" and loud.tta["on"] is True
    assert "noisy scan" in loud.tta["reason"]
    forced = segment(noisy, "default", device="cpu", tta=True)
    assert forced.tta == {"mode": "on", "on": True}
    np.testing.assert_array_equal(loud.probability, forced.probability)  # the same flips
    off = segment(noisy, "default", device="cpu", tta=False)
    assert off.tta == {"mode": "off", "on": False}
    assert not np.array_equal(off.probability, loud.probability)
