"""Review queue: most uncertain slices first, navigation, progress, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_covid_seg.correction import ReviewQueue, slice_uncertainty

SCORES = np.array([0.1, 0.9, 0.0, 0.5, 0.9, 0.3])


def test_order_is_uncertainty_descending_with_stable_ties():
    queue = ReviewQueue(SCORES)
    assert queue.order == (1, 4, 3, 5, 0, 2)
    assert len(queue) == 6


def test_next_skips_reviewed_and_wraps_previous_walks_back():
    queue = ReviewQueue(SCORES)
    assert queue.next() == 1
    queue.mark_reviewed(1)
    assert queue.next(1) == 4
    assert queue.next() == 4
    queue.mark_reviewed(4)
    assert queue.next(4) == 3
    assert queue.next(0) == 2  # after 0 in queue order comes 2
    queue.mark_reviewed(2)
    assert queue.next(0) == 3  # wraps to the first unreviewed slice
    assert queue.previous(3) == 4  # reviewed slices can be revisited
    assert queue.previous(1) is None
    assert queue.previous(None) is None
    for z in range(6):
        queue.mark_reviewed(z)
    assert queue.next(3) is None
    queue.mark_reviewed(5, reviewed=False)
    assert queue.next(3) == 5


def test_progress_and_text():
    queue = ReviewQueue(SCORES, reviewed={0, 3})
    assert queue.progress() == (2, 6)
    assert queue.progress_text() == "2/6 reviewed"
    queue.mark_reviewed(3)  # twice counts once
    queue.mark_reviewed(4)
    assert queue.progress_text() == "3/6 reviewed"
    with pytest.raises(IndexError):
        queue.mark_reviewed(6)


def test_include_restricts_the_queue():
    include = np.array([True, False, True, True, False, True])
    queue = ReviewQueue(SCORES, include=include, reviewed=[1, 3])
    assert queue.order == (3, 5, 0, 2)
    assert 1 not in queue
    assert queue.progress() == (1, 4)  # slice 1 is reviewed but not queued
    assert queue.next() == 5
    assert queue.next(1) == 5  # a slice outside the queue starts at the head


def test_dict_round_trip_is_json_serialisable():
    include = np.array([True, True, False, True, True, True])
    queue = ReviewQueue(SCORES, include=include)
    queue.mark_reviewed(4)
    state = json.loads(json.dumps(queue.to_dict()))
    again = ReviewQueue.from_dict(state)
    assert again.order == queue.order
    assert again.reviewed == {4}
    assert again.progress_text() == queue.progress_text()
    plain = ReviewQueue.from_dict(json.loads(json.dumps(ReviewQueue(SCORES).to_dict())))
    assert plain.include is None and plain.order == (1, 4, 3, 5, 0, 2)


def test_slice_uncertainty_sums_binary_entropy():
    probability = np.zeros((3, 4, 4), np.float32)
    probability[0] = 1.0  # certain
    probability[1, 0, :2] = 0.5  # two voxels of one bit each
    probability[2, 1, 1] = 0.1
    scores = slice_uncertainty(probability, chunk=2)
    h01 = -(0.1 * np.log2(0.1) + 0.9 * np.log2(0.9))
    np.testing.assert_allclose(scores, [0.0, 2.0, h01], rtol=1e-6)
    region = np.zeros((3, 4, 4), bool)
    region[1, 0, 0] = True
    np.testing.assert_allclose(slice_uncertainty(probability, region), [0.0, 1.0, 0.0], atol=1e-9)
    queue = ReviewQueue(scores)
    assert queue.order == (1, 2, 0)
