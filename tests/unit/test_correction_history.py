"""Undo/redo of mask edits as diffs: exact states, redo clearing, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_seg.correction import (
    CorrectionError,
    EditHistory,
    counted_changes,
    diff,
    paint_ball_inplace,
)

SHAPE = (8, 40, 48)


def _edit_sequence(mask: np.ndarray, history: EditHistory) -> list[np.ndarray]:
    """Six edits on different slices; return the states (initial first)."""
    rng = np.random.default_rng(0)
    states = [mask.copy()]
    edits = [
        lambda m: paint_ball_inplace(m, (1, 10, 10), 4.0, (2, 1, 1), 1),
        lambda m: paint_ball_inplace(m, (3, 20, 30), 6.0, (2, 1, 1), 2),
        lambda m: m[5].__setitem__((slice(3, 30), slice(5, 9)), 1),
        lambda m: paint_ball_inplace(m, (3, 22, 28), 3.0, (2, 1, 1), 0),  # erase part of #2
        lambda m: m.__setitem__(rng.random(m.shape) < 0.01, 3),  # scattered voxels
        lambda m: m[1:7, 10:12, 10:12].__setitem__(Ellipsis, 1),  # across slices
    ]
    for edit in edits:
        before = mask.copy()
        edit(mask)
        assert history.record(before, mask)
        states.append(mask.copy())
    return states


def test_undo_redo_restore_exact_states():
    mask = np.zeros(SHAPE, np.uint8)
    history = EditHistory()
    states = _edit_sequence(mask, history)
    assert len(history) == 6 and history.can_undo and not history.can_redo
    for state, previous in zip(states[:0:-1], states[-2::-1], strict=True):
        np.testing.assert_array_equal(mask, state)
        box = history.undo(mask)
        np.testing.assert_array_equal(mask, previous)
        changed = np.argwhere(state != previous)
        for axis, sl in enumerate(box):  # the returned box holds every changed voxel
            assert sl.start == changed[:, axis].min() and sl.stop == changed[:, axis].max() + 1
    assert not history.can_undo and history.undo(mask) is None
    for state in states[1:]:
        history.redo(mask)
        np.testing.assert_array_equal(mask, state)
    assert not history.can_redo and history.redo(mask) is None


def test_new_record_clears_redo():
    mask = np.zeros(SHAPE, np.uint8)
    history = EditHistory()
    states = _edit_sequence(mask, history)
    history.undo(mask)
    history.undo(mask)
    assert history.can_redo
    before = mask.copy()
    mask[0, 0, 0] = 7
    assert history.record(before, mask)
    assert not history.can_redo
    assert history.redo(mask) is None
    history.undo(mask)
    np.testing.assert_array_equal(mask, states[-3])


def test_no_change_is_not_recorded():
    mask = np.zeros(SHAPE, np.uint8)
    history = EditHistory()
    assert not history.record(mask, mask.copy())
    assert not history.can_undo


def test_memory_bound_drops_oldest_edits():
    mask = np.zeros(SHAPE, np.uint8)
    rng = np.random.default_rng(1)
    history = EditHistory(max_bytes=6_000)
    states = [mask.copy()]
    for z in range(8):
        before = mask.copy()
        mask[z][rng.random(SHAPE[1:]) < 0.2] = 1  # ~380 scattered voxels, ~1.9 kB each
        history.record(before, mask)
        states.append(mask.copy())
        assert history.nbytes <= 6_000
    kept = len(history)
    assert 1 <= kept < 8
    for _ in range(kept):
        history.undo(mask)
        assert history.nbytes <= 6_000
    np.testing.assert_array_equal(mask, states[8 - kept])  # exact as far as it goes
    assert not history.can_undo


def test_edit_bigger_than_budget_clears_history():
    mask = np.zeros(SHAPE, np.uint8)
    history = EditHistory(max_bytes=2_000)
    before = mask.copy()
    mask[0, 0, 0:3] = 1
    assert history.record(before, mask)
    before = mask.copy()
    mask[np.random.default_rng(2).random(SHAPE) < 0.3] = 2
    assert not history.record(before, mask)
    assert not history.can_undo and history.nbytes == 0


def test_painted_strokes_are_stored_compactly():
    mask = np.zeros((4, 512, 512), np.uint8)
    history = EditHistory()
    before = mask.copy()
    paint_ball_inplace(mask, (2, 256, 256), 20.0, (5, 0.7, 0.7), 1)
    history.record(before, mask)
    n_changed = int((mask != before).sum())
    assert n_changed > 2500
    assert history.nbytes < n_changed  # runs + one value: far less than a byte per voxel


def test_record_change_from_paint_event_indices_with_duplicates():
    mask = np.zeros((2, 4, 5), np.int32)
    history = EditHistory(shape=mask.shape)
    indices = (np.array([0, 0, 1, 0]), np.array([1, 1, 2, 3]), np.array([2, 2, 4, 0]))
    old = mask[indices].copy()
    mask[indices] = [5, 6, 7, 8]  # position (0,1,2) written twice: last value wins
    assert history.record_change(indices, old, np.array([5, 6, 7, 8]))
    after = mask.copy()
    history.undo(mask)
    assert not mask.any()
    history.redo(mask)
    np.testing.assert_array_equal(mask, after)
    assert mask[0, 1, 2] == 6
    flat = np.ravel_multi_index(([1], [0], [0]), mask.shape)
    assert history.record_change(flat, 0, 9)
    assert not history.can_redo


def test_record_atoms_makes_one_step_of_a_stroke():
    mask = np.zeros((1, 6, 6), np.uint8)
    history = EditHistory()
    atoms = []
    for x, value in [(1, 1), (2, 1), (2, 3)]:  # the stroke passes (0, 2, 2) twice
        indices = (np.array([0, 0]), np.array([2, 3]), np.array([x, x]))
        atoms.append((indices, mask[indices].copy(), value))
        mask[indices] = value
    after = mask.copy()
    assert history.record_atoms(atoms, shape=mask.shape)
    assert len(history) == 1
    history.undo(mask)
    assert not mask.any()
    history.redo(mask)
    np.testing.assert_array_equal(mask, after)
    assert mask[0, 2, 2] == 3


def test_undo_refuses_a_mask_changed_behind_its_back():
    mask = np.zeros(SHAPE, np.uint8)
    history = EditHistory()
    before = mask.copy()
    mask[2, 5:9, 5:9] = 1
    history.record(before, mask)
    mask[2, 6, 6] = 4  # not recorded
    snapshot = mask.copy()
    with pytest.raises(CorrectionError, match="changed"):
        history.undo(mask)
    np.testing.assert_array_equal(mask, snapshot)
    with pytest.raises(CorrectionError, match="recorded on a"):
        history.undo(np.zeros((2, 2, 2), np.uint8))


def test_commit_writes_changed_voxels_in_place_and_is_undoable():
    mask = np.zeros(SHAPE, np.uint8)
    mask[4, 10:14, 10:14] = 1
    original = mask.copy()
    history = EditHistory()
    wanted = original.copy()
    wanted[4, 9:15, 9:15] = 1
    wanted[2, 0, 0] = 2
    target = mask  # same object: edited in place
    box = history.commit(mask, wanted)
    assert target is mask
    np.testing.assert_array_equal(mask, wanted)
    assert box == (slice(2, 5), slice(0, 15), slice(0, 15))
    assert history.commit(mask, wanted.copy()) is None  # no change, nothing recorded
    assert len(history) == 1
    history.undo(mask)
    np.testing.assert_array_equal(mask, original)


def test_diff_with_box_equals_full_diff_and_counted_changes():
    rng = np.random.default_rng(3)
    before = (rng.random(SHAPE) < 0.3).astype(np.uint8)
    after = before.copy()
    after[3, 10:20, 5:25] = rng.integers(0, 3, (10, 20))
    full = diff(before, after)
    np.testing.assert_array_equal(full, np.flatnonzero(before != after))
    box = (slice(3, 4), slice(10, 20), slice(5, 25))
    np.testing.assert_array_equal(diff(before, after, box), full)

    counts = counted_changes(before, after)
    assert counts == {
        "added": int(((before == 0) & (after != 0)).sum()),
        "removed": int(((before != 0) & (after == 0)).sum()),
    }
    assert counts["added"] > 0 and counts["removed"] > 0
    by_label = counted_changes(before, after, label=2)
    assert by_label == {"added": int((after == 2).sum()), "removed": 0}
