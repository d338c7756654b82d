"""Live burden: incremental lesion count and volumes equal a full recomputation after every edit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_covid_seg.correction import ComponentCounter, LiveBurden, diff
from napari_covid_seg.inference.quantify import quantify

_FULL = np.ones((3, 3, 3), bool)


def _count(mask: np.ndarray) -> int:
    return int(ndimage.label(mask != 0, structure=_FULL)[1])


def _blobs(shape=(24, 48, 48), n=6, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    for _ in range(n):
        z, y, x = (int(rng.integers(2, s - 6)) for s in shape)
        mask[z : z + rng.integers(2, 5), y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = 1
    return mask


def _edit(counter_or_burden, mask: np.ndarray, new: np.ndarray) -> None:
    flat = diff(mask, new)
    before, after = np.take(mask, flat), np.take(new, flat)
    mask[...] = new
    if isinstance(counter_or_burden, ComponentCounter):
        counter_or_burden.update(flat, before, after)
    else:
        counter_or_burden.lesions_changed(flat, before, after)


def test_counter_follows_merges_splits_and_deletions():
    mask = np.zeros((10, 30, 30), np.uint8)
    mask[2:5, 2:6, 2:6] = 1
    mask[2:5, 2:6, 20:24] = 1
    counter = ComponentCounter(mask)
    assert counter.n == 2
    bridge = mask.copy()
    bridge[3, 4, 6:20] = 1  # joins the two
    _edit(counter, mask, bridge)
    assert counter.n == 1
    cut = mask.copy()
    cut[3, 4, 12] = 0  # cuts the bridge again
    _edit(counter, mask, cut)
    assert counter.n == 2
    far = mask.copy()
    far[8, 28, 28] = 1  # a new lesion outside everything seen so far
    far[0, 0, 0] = 1
    _edit(counter, mask, far)
    assert counter.n == 4
    gone = mask.copy()
    gone[8, 28, 28] = 0
    gone[2:5, 2:6, 20:24] = 0  # one lesion erased: its half of the bridge stays alone
    _edit(counter, mask, gone)
    assert counter.n == _count(mask) == 3
    # A ring cut once stays one lesion; cut twice it becomes two.
    ring = np.zeros((3, 20, 20), np.uint8)
    ring[1, 5:15, 5:15] = 1
    ring[1, 7:13, 7:13] = 0
    counter = ComponentCounter(ring)
    for cut_at in ((1, 5, 10), (1, 14, 10)):
        new = ring.copy()
        new[cut_at] = 0
        new[cut_at[0], cut_at[1] - 1 : cut_at[1] + 2, cut_at[2]] = 0
        _edit(counter, ring, new)
        assert counter.n == _count(ring)
    assert counter.n == 2


@pytest.mark.parametrize("seed", range(6))
def test_counter_equals_full_labelling_after_random_strokes(seed):
    rng = np.random.default_rng(seed)
    mask = _blobs(seed=seed)
    counter = ComponentCounter(mask)
    for _ in range(40):
        new = mask.copy()
        z, y, x = (int(rng.integers(0, s)) for s in mask.shape)
        r = int(rng.integers(1, 4))
        value = int(rng.random() < 0.55)  # paint or erase
        new[z : z + 1, max(0, y - r) : y + r, max(0, x - 3 * r) : x + 3 * r] = value
        if rng.random() < 0.2:  # a tool-like edit anywhere
            new[rng.random(mask.shape) < 0.01] = value
        _edit(counter, mask, new)
        assert counter.n == _count(mask)
    comps = counter.components()
    assert comps.n == counter.n
    full = comps.to_full()
    np.testing.assert_array_equal(full > 0, mask > 0)
    reference, n = ndimage.label(mask, structure=_FULL)
    # same partition: every component of the reference maps to one id here
    pairs = np.unique(np.stack([reference[mask > 0], full[mask > 0]]), axis=1)
    assert pairs.shape[1] == n


def test_live_burden_equals_quantify_after_lesion_and_lung_edits():
    rng = np.random.default_rng(3)
    mask = _blobs(n=8, seed=3)
    lungs = np.zeros(mask.shape, np.uint8)
    lungs[:, 4:44, 2:24] = 1
    lungs[:, 4:44, 24:46] = 2
    image = rng.uniform(-1000, 100, size=mask.shape).astype(np.float32)
    burden = LiveBurden(mask, 0.002, lungs=lungs, image=image, dense_from=-300.0)

    def same():
        got = burden.quantification().to_dict()
        want = quantify(mask, 0.002, lungs, image=image, dense_from=-300.0).to_dict()
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-9), key

    same()
    for step in range(20):
        new = mask.copy()
        z, y, x = (int(rng.integers(0, s)) for s in mask.shape)
        new[z, max(0, y - 3) : y + 3, max(0, x - 5) : x + 5] = step % 3 != 0
        _edit(burden, mask, new)
        same()
    # Correct the lungs: the left lung loses a slab, the right one gains it.
    new_lungs = lungs.copy()
    new_lungs[5:15, 4:44, 24:30] = 1
    flat = diff(lungs, new_lungs)
    before, after = np.take(lungs, flat), np.take(new_lungs, flat)
    lungs[...] = new_lungs
    burden.lungs_changed(flat, before, after)
    same()
    q = burden.quantification()
    assert q.ggo_ml + q.consolidation_ml == pytest.approx(q.lesion_ml)
    assert q.percent_right is not None and q.percent_left is not None


def test_live_burden_without_lungs_or_image():
    mask = _blobs(seed=1)
    burden = LiveBurden(mask, 0.5)
    q = burden.quantification()
    assert q.lung_ml is None and q.ggo_ml is None
    assert q.n_lesions == _count(mask)
    assert q.lesion_ml == pytest.approx(np.count_nonzero(mask) * 0.5)
