"""Undo/redo for mask edits, storing diffs (changed voxels) instead of full copies.

A brush dab on one 512x512 slice costs a few kB, not the 78 MB of a
300x512x512 uint8 mask. Changed voxels are kept as C-order flat indices (as runs
``start, length`` when that is smaller, which it is for painted strokes) plus old
and new values (a single value when they are all equal).

Typical widget use::

    history = EditHistory(max_bytes=256 * 2**20)
    before = layer.data.copy()           # or the box of the edit only
    ... edit layer.data ...
    history.record(before, layer.data)
    box = history.undo(layer.data)      # in place; refresh the layer in ``box``
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ._common import Box, CorrectionError, box_of_flat_indices, check_same_shape

_ENTRY_OVERHEAD_BYTES = 128


def diff(before: np.ndarray, after: np.ndarray, box: Box | None = None) -> np.ndarray:
    """Sorted C-order flat indices (into the full arrays) of voxels where ``before != after``.

    Args:
        before, after: arrays of the same shape.
        box: if the caller knows that nothing changed outside this box (one slice
            per axis), only the box is compared, which is much faster for small
            edits on big volumes.
    """
    check_same_shape(before, after, "before and after")
    if box is None:
        return np.flatnonzero(before != after)
    local = np.flatnonzero(before[box] != after[box])
    crop_shape = before[box].shape
    coords = np.unravel_index(local, crop_shape)
    starts = [s.indices(n)[0] for s, n in zip(box, before.shape, strict=True)]
    shifted = tuple(c + o for c, o in zip(coords, starts, strict=True))
    return np.ravel_multi_index(shifted, before.shape).astype(np.intp, copy=False)


def counted_changes(
    before: np.ndarray, after: np.ndarray, label: int | None = None
) -> dict[str, int]:
    """Count voxels a human added and removed between two masks.

    With ``label=None``: ``added`` = background -> any label, ``removed`` = any
    label -> background (relabelling a voxel counts as neither). With a label:
    ``added`` = became ``label``, ``removed`` = was ``label`` and no longer is.
    """
    changed = diff(before, after)
    old = np.take(before, changed)
    new = np.take(after, changed)
    if label is None:
        added = int(np.count_nonzero((old == 0) & (new != 0)))
        removed = int(np.count_nonzero((old != 0) & (new == 0)))
    else:
        added = int(np.count_nonzero(new == label))
        removed = int(np.count_nonzero(old == label))
    return {"added": added, "removed": removed}


def _index_dtype(size: int) -> np.dtype:
    return np.dtype(np.uint32) if size <= np.iinfo(np.uint32).max else np.dtype(np.int64)


def _compact_values(values: np.ndarray) -> np.ndarray:
    """A 0-d array when all values are equal (typical for paint), else the values."""
    if values.size > 0 and np.all(values == values[0]):
        return values[:1].reshape(())
    return values


@dataclass(frozen=True)
class _Change:
    """Changed voxels of one edit: sorted unique flat indices with old and new values."""

    shape: tuple[int, ...]
    flat: np.ndarray | None  # indices, or None when stored as runs
    run_starts: np.ndarray | None
    run_lengths: np.ndarray | None
    old: np.ndarray  # 0-d when constant
    new: np.ndarray
    size: int

    @classmethod
    def build(
        cls, flat: np.ndarray, old: np.ndarray, new: np.ndarray, shape: tuple[int, ...]
    ) -> _Change:
        index_dtype = _index_dtype(int(np.prod(shape)))
        breaks = np.flatnonzero(np.diff(flat) != 1) + 1
        if 2 * (breaks.size + 1) < flat.size:
            bounds = np.concatenate(([0], breaks, [flat.size]))
            return cls(
                shape,
                None,
                flat[bounds[:-1]].astype(index_dtype),
                np.diff(bounds).astype(index_dtype),
                _compact_values(old),
                _compact_values(new),
                int(flat.size),
            )
        return cls(
            shape,
            flat.astype(index_dtype),
            None,
            None,
            _compact_values(old),
            _compact_values(new),
            int(flat.size),
        )

    @property
    def nbytes(self) -> int:
        arrays = (self.flat, self.run_starts, self.run_lengths, self.old, self.new)
        return _ENTRY_OVERHEAD_BYTES + sum(a.nbytes for a in arrays if a is not None)

    def indices(self) -> np.ndarray:
        if self.flat is not None:
            return self.flat.astype(np.intp)
        starts = self.run_starts.astype(np.intp)
        lengths = self.run_lengths.astype(np.intp)
        run_offset = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        return run_offset + np.arange(self.size, dtype=np.intp)

    def apply(self, mask: np.ndarray, forward: bool, check: bool) -> Box | None:
        if mask.shape != self.shape:
            raise CorrectionError(
                f"the history was recorded on a {self.shape} mask, not this {mask.shape} "
                "one; clear the history when the mask is replaced"
            )
        indices = self.indices()
        expected, target = (self.old, self.new) if forward else (self.new, self.old)
        if check and not np.all(np.take(mask, indices) == expected):
            raise CorrectionError(
                "the mask was changed without being recorded in the edit history, so "
                "this undo/redo would not restore a real state; clear the history"
            )
        np.put(mask, indices, np.broadcast_to(target, indices.shape))
        return box_of_flat_indices(indices, self.shape)


class EditHistory:
    """Bounded undo/redo stack of mask edits (diffs).

    Args:
        max_bytes: memory budget for all stored diffs (undo and redo together).
            The oldest edits are dropped first; an edit bigger than the whole budget
            cannot be undone and clears the history.
        max_steps: optional cap on the number of undo steps.
        shape: shape of the edited mask; needed only by :meth:`record_change` with
            per-axis indices before any :meth:`record`.
    """

    def __init__(
        self,
        max_bytes: int = 256 * 2**20,
        max_steps: int | None = None,
        shape: Sequence[int] | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = int(max_bytes)
        self.max_steps = max_steps
        self.shape: tuple[int, ...] | None = tuple(shape) if shape is not None else None
        self._undo: deque[_Change] = deque()
        self._redo: list[_Change] = []

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def nbytes(self) -> int:
        """Bytes held by all stored diffs (undo and redo)."""
        return sum(c.nbytes for c in self._undo) + sum(c.nbytes for c in self._redo)

    def __len__(self) -> int:
        """Number of edits that can be undone."""
        return len(self._undo)

    def clear(self) -> None:
        """Forget every edit (e.g. when the mask is replaced by a new segmentation)."""
        self._undo.clear()
        self._redo.clear()

    def record(self, before: np.ndarray, after: np.ndarray, box: Box | None = None) -> bool:
        """Record the edit that turned ``before`` into ``after``; clears the redo stack.

        Args:
            before, after: the mask before and after the edit (same shape).
            box: optional region outside which nothing changed (speeds up the diff).

        Returns:
            True if the edit is stored, False if nothing changed or it exceeds
            ``max_bytes`` (the history is then cleared, since older edits could not
            be reached past it).
        """
        flat = diff(before, after, box)
        return self._push(flat, np.take(before, flat), np.take(after, flat), before.shape)

    def record_change(
        self,
        indices: np.ndarray | tuple[np.ndarray, ...],
        old_values: np.ndarray | int,
        new_values: np.ndarray | int,
        shape: Sequence[int] | None = None,
    ) -> bool:
        """Record an edit given as changed positions with their old and new values.

        Args:
            indices: C-order flat indices, or a tuple of per-axis index arrays (as in a
                napari Labels ``paint`` event). Repeated positions are allowed: the
                first old value and the last new value count.
            old_values, new_values: values before/after (arrays or scalars).
            shape: shape of the mask (else the one known from earlier records).

        Returns:
            As :meth:`record`.
        """
        shape_t = tuple(shape) if shape is not None else self.shape
        if shape_t is None:
            raise ValueError("record_change needs the mask shape (pass shape=...)")
        if isinstance(indices, tuple):
            flat = np.ravel_multi_index(tuple(np.asarray(i) for i in indices), shape_t)
        else:
            flat = np.asarray(indices, dtype=np.intp)
        flat = np.asarray(flat, dtype=np.intp).ravel()
        old = np.broadcast_to(np.asarray(old_values), flat.shape)
        new = np.broadcast_to(np.asarray(new_values), flat.shape)
        unique, first = np.unique(flat, return_index=True)
        last = flat.size - 1 - np.unique(flat[::-1], return_index=True)[1]
        old, new = old[first], new[last]
        keep = old != new
        return self._push(unique[keep], old[keep], new[keep], shape_t)

    def record_atoms(
        self,
        atoms: Iterable[tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray | int]],
        shape: Sequence[int] | None = None,
    ) -> bool:
        """Record several ``(indices, old_values, new_values)`` changes as ONE undo step.

        For a napari Labels ``paint`` event, whose ``value`` is the list of such atoms
        of one brush stroke, in the order they were applied.
        """
        atoms = list(atoms)
        if not atoms:
            return False
        ndim = len(atoms[0][0])
        sizes = [np.size(atom[0][0]) for atom in atoms]
        indices = tuple(
            np.concatenate([np.ravel(atom[0][axis]) for atom in atoms]) for axis in range(ndim)
        )
        old = np.concatenate(
            [np.broadcast_to(np.asarray(a[1]), (n,)) for a, n in zip(atoms, sizes, strict=True)]
        )
        new = np.concatenate(
            [np.broadcast_to(np.asarray(a[2]), (n,)) for a, n in zip(atoms, sizes, strict=True)]
        )
        return self.record_change(indices, old, new, shape)

    def _push(
        self, flat: np.ndarray, old: np.ndarray, new: np.ndarray, shape: tuple[int, ...]
    ) -> bool:
        if flat.size == 0:
            return False
        if self.shape is None:
            self.shape = tuple(shape)
        change = _Change.build(flat, old, new, tuple(shape))
        self._redo.clear()
        if change.nbytes > self.max_bytes:
            self._undo.clear()
            return False
        self._undo.append(change)
        total = sum(c.nbytes for c in self._undo)
        while total > self.max_bytes or (
            self.max_steps is not None and len(self._undo) > self.max_steps
        ):
            total -= self._undo.popleft().nbytes
        return True

    def commit(self, mask: np.ndarray, new_mask: np.ndarray, box: Box | None = None) -> Box | None:
        """Write ``new_mask`` into ``mask`` in place (changed voxels only) and record it.

        The usual way to apply a tool's result to a napari layer's data::

            changed = history.commit(layer.data, grow(layer.data, 2.0, spacing))
            if changed is not None:
                layer.refresh()

        Args:
            mask: the array to edit (e.g. ``layer.data``).
            new_mask: the wanted state, same shape.
            box: optional region outside which nothing changed (speeds up the diff).

        Returns:
            Box of the changed voxels, or None if nothing changed. The edit is applied
            even when it is too big to be undone (see :meth:`record`).
        """
        flat = diff(mask, new_mask, box)
        if flat.size == 0:
            return None
        new_values = np.take(new_mask, flat)
        self._push(flat, np.take(mask, flat), new_values, mask.shape)
        np.put(mask, flat, new_values)
        return box_of_flat_indices(flat, mask.shape)

    def undo(self, mask: np.ndarray, check: bool = True) -> Box | None:
        """Undo the last edit on ``mask`` in place; return the changed box or None.

        Args:
            mask: the mask in the state right after the last recorded edit.
            check: verify first that ``mask`` holds the recorded new values (raises
                :class:`CorrectionError` and changes nothing if not).
        """
        if not self._undo:
            return None
        change = self._undo[-1]
        box = change.apply(mask, forward=False, check=check)
        self._redo.append(self._undo.pop())
        return box

    def redo(self, mask: np.ndarray, check: bool = True) -> Box | None:
        """Redo the last undone edit on ``mask`` in place; return the changed box or None."""
        if not self._redo:
            return None
        change = self._redo[-1]
        box = change.apply(mask, forward=True, check=check)
        self._undo.append(self._redo.pop())
        return box
