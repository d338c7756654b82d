"""bf16 autocast (the CPU default where the CPU has bf16) agrees with fp32 on a real model."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_seg.errors import ModelLoadError
from napari_covid_seg.inference.engine import segment
from napari_covid_seg.io.phantom import make_phantom
from napari_covid_seg.models.store import ModelStore


def bundled_default():
    try:
        return ModelStore().resolve("default")
    except ModelLoadError:
        pytest.skip("no bundled default model in this checkout (trained weights are data)")


def test_bf16_mask_agrees_with_fp32_on_the_bundled_model():
    path = bundled_default()
    img, truth = make_phantom(shape=(8, 128, 128), seed=4)
    masks = {
        p: segment(img, str(path), precision=p, device="cpu").mask > 0 for p in ("fp32", "bf16")
    }
    a, b = masks["fp32"], masks["bf16"]
    assert a.sum() > 500  # the trained model finds the phantom's lesions
    assert 2 * np.count_nonzero(a & b) / (a.sum() + b.sum()) > 0.99
    gt = truth.data > 0
    assert 2 * np.count_nonzero(b & gt) / (b.sum() + gt.sum()) > 0.6
