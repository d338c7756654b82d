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
from magicgui.widgets import Container, Label, PushButton

from ..correction import ReviewQueue
from ._layers import current_index, jump_to, plugin_meta, wrap_labels


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


class ReviewPanel(Container):
    """Previous / next / mark reviewed, and "12/87 reviewed" (a magicgui container)."""

    def __init__(self, viewer: Any) -> None:
        super().__init__(labels=False)
        self.viewer = viewer
        self.layer: Any = None
        self.axial_axis = 0
        self.queue: ReviewQueue | None = None
        self.cursor: int | None = None  # the last slice visited through the queue
        self.on_change: Any = None
        self.hint = Label(
            name="hint",
            value="Axial slices, most uncertain first; reviewed slices are what training uses.",
        )
        wrap_labels(self.hint)
        self.progress = Label(name="progress", value="no mask")
        self.where = Label(name="where", value="")
        self.prev_button = PushButton(name="previous", text="◀ Previous")
        self.prev_button.clicked.connect(lambda *_: self.previous())
        self.next_button = PushButton(name="next", text="Next ▶")
        self.next_button.clicked.connect(lambda *_: self.next())
        self.mark_button = PushButton(name="mark_reviewed", text="Mark reviewed")
        self.mark_button.tooltip = "Mark the shown axial slice as checked and go to the next one"
        self.mark_button.clicked.connect(lambda *_: self.mark_reviewed())
        labels = Container(name="labels_row", layout="horizontal", labels=False)
        labels.extend([self.progress, self.where])
        labels.native.layout().insertStretch(1, 1)  # progress at the left, the slice at the right
        row = Container(
            name="buttons",
            layout="horizontal",
            labels=False,
            widgets=[self.prev_button, self.next_button, self.mark_button],
        )
        for box in (labels, row):
            box.margins = (0, 0, 0, 0)
        self.extend([self.hint, labels, row])
        self.native.layout().addStretch(1)  # rows at the top, not spread over the page
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
            self.progress.value = "no mask"
            self.where.value = ""
            return None
        self.progress.value = self.queue.progress_text()
        z = self.current_slice()
        if z is not None:
            done = " ✓" if self.queue.is_reviewed(z) else ""
            self.where.value = f"slice {z} (uncertainty {self.queue.uncertainty[z]:.3f}){done}"
        return None
