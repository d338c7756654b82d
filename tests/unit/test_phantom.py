"""The sample phantom is deterministic, in HU, and its lesions lie inside the lungs."""

from __future__ import annotations

import numpy as np

from napari_covid_seg.io.phantom import CONSOLIDATION_HU, GGO_HU, make_phantom


def test_phantom_is_deterministic_and_geometric():
    a, ta = make_phantom(seed=3, shape=(16, 96, 96))
    b, tb = make_phantom(seed=3, shape=(16, 96, 96))
    c, _ = make_phantom(seed=4, shape=(16, 96, 96))
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(ta.data, tb.data)
    assert not np.array_equal(a.data, c.data)
    assert a.data.dtype == np.int16 and ta.data.dtype == np.uint8
    assert a.spacing == (2.5, 1.4, 1.4)
    assert not np.allclose(a.affine, np.eye(4))
    np.testing.assert_array_equal(a.affine, ta.affine)
    assert a.reorientation.is_identity  # stored LPS, presented as SPL without copies


def test_phantom_intensities_and_lesions():
    img, truth = make_phantom()
    lungs = truth.extra["lungs"]
    types = truth.extra["lesion_types"]
    assert set(np.unique(lungs)) == {0, 1, 2}
    assert truth.data.sum() > 1000
    assert np.all(lungs[truth.data > 0] > 0)  # lesions only inside the lungs
    assert {1, 2} <= set(np.unique(types))
    healthy = (lungs > 0) & (truth.data == 0)
    assert -950 < np.median(img.data[healthy]) < -750
    assert abs(np.median(img.data[types == 1]) - GGO_HU) < 60
    assert abs(np.median(img.data[types == 2]) - CONSOLIDATION_HU) < 40
    assert img.data.min() >= -1024 and img.data.max() > 500  # bone present
