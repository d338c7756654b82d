"""Edits of one Labels layer: undo/redo for tools AND brush strokes, HU-limited paint, autosave.

:class:`EditSession` owns a :class:`~napari_covid_seg.correction.EditHistory`
and a shadow copy of the mask (the last state it recorded):

* tool edits go through :meth:`EditSession.apply` (one undo step each);
* napari brush/fill/polygon strokes arrive as the layer's ``paint`` event after
  the stroke; the session diffs the stroke's box against the shadow, reverts
  voxels outside the HU range when "paint limited to HU" is on
  (:func:`~napari_covid_seg.correction.restrict_edit_to_hu_range_inplace`) and
  records the rest as one undo step;
* changes made behind its back (scripts, napari's own undo) are recorded as one
  step before the next edit, so undo always restores real states;
* every recorded change schedules an autosave (at most one per ``interval_s``);
  :meth:`flush` saves a pending change now (on close);
* every change, undo and redo included, is reported as ``on_record(flat,
  before, after)`` (what the live numbers are updated from), and the voxels of
  brush strokes are kept (:meth:`take_painted`) for "Fill between slices".

Ctrl+Z / Ctrl+Shift+Z (and Ctrl+Y) on the layer call :meth:`undo` / :meth:`redo`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from ..correction import AutosaveStore, EditHistory, Throttle
from ..correction.paint import restrict_edit_to_hu_range_inplace

Box = tuple[slice, ...]
Record = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
UNDO_KEYS = ("Control-Z",)
REDO_KEYS = ("Control-Shift-Z", "Control-Y")


def _atom_box(atom: Any, shape: Sequence[int]) -> Box | None:
    """Bounding box of one napari history atom (masked paint or fancy-index tuple)."""
    key = getattr(atom, "slice_key", None)
    if key is not None:
        return tuple(slice(*s.indices(n)[:2]) for s, n in zip(key, shape, strict=True))
    try:
        indices = atom[0]
        coords = [np.asarray(i) for i in indices]
        if len(coords) != len(shape) or coords[0].size == 0:
            return None
        return tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    except (TypeError, IndexError, ValueError):
        return None


def paint_event_box(value: Any, shape: Sequence[int]) -> Box | None:
    """Union box of a napari Labels ``paint`` event's atoms; None = unknown (diff everything)."""
    boxes = []
    for atom in value or ():
        box = _atom_box(atom, shape)
        if box is None:
            return None
        boxes.append(box)
    if not boxes:
        return None
    return tuple(
        slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes))
        for a in range(len(shape))
    )


class EditSession:
    """Undo/redo, HU-limited painting and autosave for one Labels layer.

    Args:
        layer: the napari Labels layer (its ``data`` is edited in place).
        image: the CT voxels (same shape) for HU-limited paint, or None.
        autosave: store and image fingerprint, or None to disable autosave.
        autosave_meta: ``() -> dict`` extra JSON metadata saved with each autosave.
        interval_s: minimum seconds between two autosaves.
        on_change: called (on the GUI thread) after every recorded change.
        on_replaced: called after the layer got a new array (e.g. a new segmentation).
        on_record: ``(flat, before, after)`` for every recorded change (C-order flat
            indices, old and new values), undo and redo included.
    """

    def __init__(
        self,
        layer: Any,
        image: np.ndarray | None = None,
        *,
        autosave: tuple[AutosaveStore, str] | None = None,
        autosave_meta: Callable[[], dict] | None = None,
        interval_s: float = 3.0,
        on_change: Callable[[], None] | None = None,
        on_replaced: Callable[[], None] | None = None,
        on_record: Record | None = None,
    ) -> None:
        self.layer = layer
        self.image = image
        self.hu_range: tuple[float, float] | None = None
        self.history = EditHistory(shape=layer.data.shape)
        self.shadow = np.array(layer.data, copy=True)
        self.reverted_voxels = 0
        self._autosave = autosave
        self._autosave_meta = autosave_meta or dict
        self._throttle = Throttle(interval_s, clock=time.monotonic)
        self._on_change = on_change or (lambda: None)
        self._on_replaced = on_replaced or (lambda: None)
        self.on_record: Record | None = on_record
        self._painted: list[np.ndarray] = []
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._save_if_due)
        self._dirty = False
        self._saved_mono = 0.0
        self.last_saved_at: float | None = None
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data_replaced)
        for key in UNDO_KEYS:
            layer.bind_key(key, self._undo_key, overwrite=True)
        for key in REDO_KEYS:
            layer.bind_key(key, self._redo_key, overwrite=True)

    def close(self) -> None:
        """Save pending work and stop listening to the layer."""
        self.flush()
        self._timer.stop()
        self.layer.events.paint.disconnect(self._on_paint)
        self.layer.events.data.disconnect(self._on_data_replaced)
        for key in (*UNDO_KEYS, *REDO_KEYS):
            self.layer.bind_key(key, None, overwrite=True)

    # -- recording ---------------------------------------------------------------------------
    @property
    def data(self) -> np.ndarray:
        return self.layer.data

    def _diff(self, box: Box | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(flat, before, after)`` of the voxels where the layer differs from the shadow."""
        data = self.data
        if box is None:
            box = tuple(slice(0, n) for n in data.shape)
        before, after = self.shadow[box], data[box]
        local = np.flatnonzero(before != after)
        coords = np.unravel_index(local, before.shape)
        flat = np.ravel_multi_index(
            tuple(c + s.start for c, s in zip(coords, box, strict=True)), data.shape
        )
        values = before.reshape(-1)[local], after.reshape(-1)[local]
        self.shadow[box] = after
        return np.asarray(flat, dtype=np.intp), *values

    def _notify(self, flat: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
        if self.on_record is not None and flat.size:
            self.on_record(flat, before, after)

    def _record(self, box: Box | None = None, painted: bool = False) -> np.ndarray:
        """Record the difference between the shadow and the layer (inside ``box``).

        Returns the changed voxels' flat indices (kept for fill-between if ``painted``).
        """
        flat, before, after = self._diff(box)
        if flat.size == 0:
            return flat
        self.history.record_change(flat, before, after, shape=self.data.shape)
        if painted:
            self._painted.append(flat)
        self._notify(flat, before, after)
        self._changed()
        return flat

    def sync(self) -> int:
        """Record changes made outside the session (one undo step); number of voxels."""
        return int(self._record().size)

    def apply(self, tool: Callable[[np.ndarray], np.ndarray]) -> int:
        """Run ``tool(mask) -> new mask`` as one undoable edit; number of voxels changed."""
        self.sync()
        new = np.asarray(tool(self.data))
        if new.shape != self.data.shape:
            raise ValueError(f"tool returned shape {new.shape}, expected {self.data.shape}")
        changed = np.flatnonzero(new != self.data)
        if changed.size == 0:
            return 0
        np.put(self.data, changed, np.take(new, changed))
        self.layer.refresh()
        return int(self._record().size)

    def apply_slices(
        self, axis: int, span: tuple[int, int], write: Callable[[np.ndarray], None]
    ) -> int:
        """Run ``write(mask)`` (in place, only on slices ``span`` of ``axis``) as one edit.

        Only those slices are compared (a click on one slice of a big volume
        stays cheap); returns the number of voxels changed.
        """
        box = tuple(
            slice(*span) if a == axis else slice(0, n) for a, n in enumerate(self.data.shape)
        )
        self._record(box)  # changes made behind the session's back there: their own step
        write(self.data)
        self.layer.refresh()
        return int(self._record(box).size)

    def _on_paint(self, event: Any) -> None:
        box = paint_event_box(getattr(event, "value", None), self.data.shape)
        if self.hu_range is not None and self.image is not None:
            full = box or tuple(slice(0, n) for n in self.data.shape)
            after = self.data[full]
            reverted = restrict_edit_to_hu_range_inplace(
                self.shadow[full], after, self.image[full], self.hu_range
            )
            if reverted:
                self.reverted_voxels += reverted
                self.layer.refresh()
        self._record(box, painted=True)

    def take_painted(self) -> np.ndarray:
        """Flat indices of the voxels brush strokes changed since the last call; forgets them."""
        painted = self.painted()
        self._painted = []
        return painted

    def painted(self) -> np.ndarray:
        """Flat indices of the voxels brush strokes changed since :meth:`take_painted`."""
        return np.unique(np.concatenate(self._painted)) if self._painted else np.zeros(0, np.intp)

    def _on_data_replaced(self, event: Any = None) -> None:
        """The layer got a new array (e.g. a new segmentation): start a fresh history."""
        self.history = EditHistory(shape=self.data.shape)
        self.shadow = np.array(self.data, copy=True)
        self._painted = []
        self._on_replaced()
        self._changed()

    # -- undo / redo ---------------------------------------------------------------------------
    def undo(self) -> bool:
        """Undo the last edit (tool or brush stroke); False if there is none."""
        self.sync()
        if not self.history.can_undo:
            return False
        self._notify(*self._diff(self.history.undo(self.data)))
        self.layer.refresh()
        self._changed()
        return True

    def redo(self) -> bool:
        """Redo the last undone edit; False if there is none."""
        if not self.history.can_redo:
            return False
        self._notify(*self._diff(self.history.redo(self.data)))
        self.layer.refresh()
        self._changed()
        return True

    def _undo_key(self, layer: Any = None) -> None:
        self.undo()

    def _redo_key(self, layer: Any = None) -> None:
        self.redo()

    def touch(self) -> None:
        """Data saved with the mask changed (e.g. reviewed slices): autosave soon."""
        self._changed()

    # -- autosave --------------------------------------------------------------------------------
    def _changed(self) -> None:
        self._dirty = True
        if self._autosave is not None:
            self._save_if_due()
        self._on_change()

    def _save_if_due(self) -> None:
        if not self._dirty or self._autosave is None:
            return
        if self._throttle.due():
            self.save_now()
        elif not self._timer.isActive():
            wait = self._throttle.min_interval_s - (time.monotonic() - self._saved_mono)
            self._timer.start(max(10, int(1000 * wait)))

    def save_now(self) -> None:
        """Write the autosave now (atomic)."""
        if self._autosave is None:
            return
        store, fp = self._autosave
        store.save(fp, self.data, self._autosave_meta())
        self._throttle.mark()
        self._saved_mono = time.monotonic()
        self._dirty = False
        self.last_saved_at = time.time()

    def flush(self) -> None:
        """Save now if there are unsaved changes."""
        if self._dirty:
            self.save_now()
