"""Review queue of the Correct widget: axial slices, most uncertain first.

The queue comes from the Labels layer's ``metadata["covid_seg"]["review"]``
(written by the Segment widget from the per-slice uncertainty), else from its
``slice_uncertainty``, else every axial slice in order. "Mark reviewed" stores
the reviewed slice indices (along the source's axial axis) back in the
metadata, from where "Export for training" and the autosave take them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..correction import ReviewQueue
from ._layers import current_index, jump_to, plugin_meta


def queue_for(layer: Any, axial_axis: int) -> ReviewQueue:
    """The layer's review queue (see the module docstring)."""
    meta = plugin_meta(layer)
    n = layer.data.shape[axial_axis]
    state = meta.get("review")
    if isinstance(state, dict) and len(state.get("uncertainty") or ()) == n:
        return ReviewQueue.from_dict(state)
    scores = meta.get("slice_uncertainty")
    if scores is None or len(scores) != n:
        scores = np.zeros(n)
    return ReviewQueue(np.asarray(scores, dtype=np.float64))


class ReviewPanel(QWidget):
    """Previous / next / mark reviewed, and "12/87 reviewed"."""

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self.layer: Any = None
        self.axial_axis = 0
        self.queue: ReviewQueue | None = None
        self.cursor: int | None = None  # the last slice visited through the queue
        self.on_change: Any = None
        self.progress = QLabel("no mask")
        self.where = QLabel("")
        self.prev_button = QPushButton("◀ Previous")
        self.prev_button.clicked.connect(self.previous)
        self.next_button = QPushButton("Next ▶")
        self.next_button.clicked.connect(self.next)
        self.mark_button = QPushButton("Mark reviewed")
        self.mark_button.setToolTip("Mark the shown axial slice as checked and go to the next one")
        self.mark_button.clicked.connect(self.mark_reviewed)
        row = QHBoxLayout()
        for button in (self.prev_button, self.next_button, self.mark_button):
            row.addWidget(button)
        labels = QHBoxLayout()
        labels.addWidget(self.progress)
        labels.addStretch(1)
        labels.addWidget(self.where)
        hint = QLabel("Axial slices, most uncertain first; reviewed slices are what training uses.")
        hint.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(hint)
        layout.addLayout(labels)
        layout.addLayout(row)
        layout.addStretch(1)
        viewer.dims.events.current_step.connect(self._update)

    def set_layer(self, layer: Any, axial_axis: int = 0) -> None:
        self.layer, self.axial_axis = layer, axial_axis
        self.queue = queue_for(layer, axial_axis) if layer is not None else None
        self.cursor = None
        self._update()

    def current_slice(self) -> int | None:
        if self.layer is None:
            return None
        return current_index(self.viewer, self.layer)[self.axial_axis]

    def go_to(self, z: int | None) -> None:
        """Show axial slice ``z`` (keeping the in-plane camera)."""
        if z is None or self.layer is None:
            self._update()
            return
        index = list(current_index(self.viewer, self.layer))
        index[self.axial_axis] = int(z)
        jump_to(self.viewer, self.layer, index, axis=self.axial_axis)
        self._update()

    def next(self) -> int | None:
        """Go to the next unreviewed slice in queue order (first: the most uncertain one).

        Returns it, or None when every queued slice is reviewed.
        """
        if self.queue is None:
            return None
        z = self.queue.next(self.cursor)
        self.cursor = z if z is not None else self.cursor
        self.go_to(z)
        return z

    def previous(self) -> int | None:
        """Go back to the slice before the last visited one in queue order."""
        if self.queue is None:
            return None
        z = self.queue.previous(self.cursor)
        self.cursor = z if z is not None else self.cursor
        self.go_to(z)
        return z

    def mark_reviewed(self) -> int | None:
        """Mark the shown slice reviewed, save it in the metadata, go to the next one."""
        if self.queue is None:
            return None
        z = self.current_slice()
        self.queue.mark_reviewed(z)
        if z in self.queue:
            self.cursor = z
        plugin_meta(self.layer)["review"] = self.queue.to_dict()
        if self.on_change is not None:
            self.on_change()
        return self.next()

    def reviewed_slices(self) -> list[int]:
        return sorted(self.queue.reviewed) if self.queue is not None else []

    def _update(self, event: Any = None) -> None:
        if self.queue is None:
            self.progress.setText("no mask")
            self.where.setText("")
            return None
        self.progress.setText(self.queue.progress_text())
        z = self.current_slice()
        if z is not None:
            done = " ✓" if self.queue.is_reviewed(z) else ""
            self.where.setText(f"slice {z} (uncertainty {self.queue.uncertainty[z]:.3f}){done}")
        return None
