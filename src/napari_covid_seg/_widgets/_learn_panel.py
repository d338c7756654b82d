""" "Learn from my corrections": fine-tune on this volume's reviewed/corrected slices, re-segment
the rest, as one undoable step (a thin view over
:func:`napari_covid_seg.training.learn_in_volume.iter_learn`).

The work runs in napari's ``thread_worker`` on copies of the CT and the mask;
the layer is touched only in the ``returned`` handler, on the GUI thread,
through the edit session (:meth:`EditSession.apply`: one Ctrl+Z undoes it).
Slices the user edits while it runs are kept as they are. Cancel stops at the
next batch and leaves the mask unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from magicgui.widgets import Container, Label, ProgressBar, PushButton, SpinBox

from ._layers import wrap_labels
from ._notify import describe_error, notify_error, notify_info

#: Fewer slices than this: the button stays off (nothing sensible to learn from).
MIN_SLICES = 1


class LearnPanel(Container):
    """Button, epochs, progress and Cancel for within-volume learning (a magicgui container).

    Bind it with :meth:`set_context`; :meth:`start` returns the worker (tests
    wait on it). ``on_done(result)`` is called after the labels were replaced.
    """

    def __init__(self) -> None:
        super().__init__(labels=False)
        self.session: Any = None
        self.image: Any = None
        self.axial_axis = 0
        self.reviewed: Callable[[], list[int]] = list
        self.prediction: Callable[[], np.ndarray | None] = lambda: None
        self.model: Callable[[], str] = lambda: "default"
        self.device = "auto"
        self.segment_options: dict[str, Any] = {}
        self.on_done: Callable[[Any], None] | None = None
        self.worker: Any = None
        self.result: Any = None
        self._stop = False
        self._snapshot: np.ndarray | None = None
        # After a run its output is the new "prediction" and its inputs stay vouched for.
        self._baseline: np.ndarray | None = None
        self._learned: set[int] = set()
        from ..training.learn_in_volume import LEARN_DEFAULTS

        self.summary = Label(name="summary", value="")
        self.epochs = SpinBox(
            name="epochs", value=int(LEARN_DEFAULTS["epochs"]), min=1, max=100, step=1
        )
        self.epochs.tooltip = "Passes over the reviewed and corrected slices"
        self.button = PushButton(name="learn", text="Learn from my corrections")
        self.button.tooltip = (
            "Fine-tune a copy of the model on the reviewed and corrected slices of this CT, "
            "then re-segment its other slices (reviewed and corrected slices are kept). "
            "One undo step; nothing is saved to the model store."
        )
        self.button.clicked.connect(lambda *_: self.start())
        self.cancel_button = PushButton(name="cancel", text="Cancel", enabled=False)
        self.cancel_button.clicked.connect(lambda *_: self.cancel())
        self.progress = ProgressBar(name="progress", value=0, min=0, max=1000)
        self.progress.native.setFormat("")
        self.status = Label(name="status", value="")
        wrap_labels(self.summary, self.status)
        # The button on its own row, epochs and Cancel below it: the dock may be ~350 px wide.
        # (magicgui's spin box, superqt's QLargeIntSpinBox, takes no prefix: a caption beside it)
        epochs_label = Label(name="epochs_label", value="Epochs")
        below = Container(
            name="below",
            layout="horizontal",
            labels=False,
            widgets=[epochs_label, self.epochs, self.cancel_button],
        )
        below.margins = (0, 0, 0, 0)
        self.margins = (0, 0, 0, 0)
        self.extend([self.summary, self.button, below, self.progress, self.status])
        self.native.layout().addStretch(1)  # rows at the top, not spread over the page
        self.refresh()

    # -- binding ---------------------------------------------------------------------------------
    def set_context(
        self,
        session: Any,
        image: Any,
        axial_axis: int,
        *,
        reviewed: Callable[[], list[int]] | None = None,
        prediction: Callable[[], np.ndarray | None] | None = None,
        model: Callable[[], str] | None = None,
    ) -> None:
        """The edit session of the lesion mask, the CT layer and where to read the rest."""
        self.session, self.image, self.axial_axis = session, image, int(axial_axis)
        self._baseline, self._learned = None, set()
        self.reviewed = reviewed or list
        self.prediction = prediction or (lambda: None)
        self.model = model or (lambda: "default")
        self.refresh()

    def train_slices(self) -> list[int]:
        """Reviewed slices and slices edited away from the model's prediction."""
        from ..training.learn_in_volume import slices_to_learn

        if self.session is None:
            return []
        baseline = self._baseline
        if baseline is None or baseline.shape != self.session.data.shape:
            baseline = self.prediction()
        reviewed = sorted(set(self.reviewed()) | self._learned)
        return slices_to_learn(self.session.data, baseline, reviewed, self.axial_axis)

    def refresh(self) -> None:
        """Update the summary line and the button."""
        running = self.worker is not None
        if self.session is None or self.image is None:
            self.summary.value = "Needs a lesion mask and its CT image."
            self.button.enabled = False
            return
        zs = self.train_slices()
        self.summary.value = f"{len(zs)} reviewed or corrected slice(s) to learn from" + (
            f": {', '.join(map(str, zs[:12]))}{' …' if len(zs) > 12 else ''}" if zs else ""
        )
        self.button.enabled = len(zs) >= MIN_SLICES and not running

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> Any:
        """Start learning in a thread; returns the worker (None when nothing to do)."""
        if self.worker is not None or self.session is None or self.image is None:
            return None
        zs = self.train_slices()
        if len(zs) < MIN_SLICES:
            notify_error("Review or correct at least one slice first (Review tab).")
            return None
        from napari.qt.threading import create_worker

        from ..training.learn_in_volume import iter_learn
        from ._layers import layer_volume

        volume = layer_volume(self.image)
        self.session.sync()
        self._snapshot = np.array(self.session.data, copy=True)
        self._stop = False
        worker = create_worker(
            iter_learn,
            volume,
            self._snapshot,
            zs,
            self.model(),
            epochs=int(self.epochs.value),
            device=self.device,
            should_stop=lambda: self._stop,
            segment_options=dict(self.segment_options),
            _start_thread=False,
            _connect={"errored": self._on_error},  # errors end here, not re-raised
        )
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.result = None
        self.button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.status.value = f"Learning from {len(zs)} slice(s)…"
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop at the next batch; the mask stays as it is."""
        if self.worker is not None:
            self._stop = True
            self.cancel_button.enabled = False
            self.status.value = "Cancelling…"

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "batch":
            epochs = max(1, int(event.get("n_epochs") or 1))
            done = (event["epoch"] - 1 + event["batch"] / max(1, event["n_batches"])) / epochs
            self.progress.value = int(800 * min(1.0, done))
            self.progress.native.setFormat(f"learning: epoch {event['epoch']}/{epochs}")
        elif kind == "segment":
            self.progress.value = 800 + int(200 * event["done"] / max(1, event["total"]))
            self.progress.native.setFormat("re-segmenting")

    def _on_returned(self, result: Any) -> None:
        """Apply the new labels as one undo step, keeping slices edited meanwhile."""
        snapshot, self._snapshot = self._snapshot, None
        if self.session is None or snapshot is None or snapshot.shape != result.labels.shape:
            self.status.value = "The mask changed shape while learning: nothing applied."
            return
        current = np.moveaxis(np.asarray(self.session.data), self.axial_axis, 0)
        before = np.moveaxis(snapshot, self.axial_axis, 0)
        edited = (current != before).reshape(current.shape[0], -1).any(axis=1)
        new = np.moveaxis(np.array(result.labels, copy=True), self.axial_axis, 0)
        new[edited] = current[edited]
        new = np.moveaxis(new, 0, self.axial_axis).astype(self.session.data.dtype)
        changed = self.session.apply(lambda _: new)
        self._baseline = np.array(new, copy=True)
        self._learned |= set(result.protected_slices) | set(np.flatnonzero(edited).tolist())
        self.result = result
        self.progress.value = 1000
        self.progress.native.setFormat("done")
        t = result.timings
        kept = len(result.protected_slices) + int(edited.sum())
        text = (
            f"Re-segmented: {len(result.changed_slices)} slice(s) changed ({changed} voxels), "
            f"{kept} kept; learned in {t.get('train', 0):.0f} s, segmented in "
            f"{t.get('segment', 0):.0f} s. Ctrl+Z undoes it."
        )
        self.status.value = text
        notify_info(text)
        if self.on_done is not None:
            self.on_done(result)

    def _on_error(self, error: BaseException) -> None:
        from ..errors import CancelledError

        self._snapshot = None
        self.progress.value = 0
        self.progress.native.setFormat("")
        if isinstance(error, CancelledError):
            self.status.value = "Cancelled: the mask is unchanged."
            return
        self.status.value = "Failed: the mask is unchanged."
        notify_error(describe_error(error, "Learn from my corrections"))

    def _finished(self) -> None:
        self.worker = None
        self.cancel_button.enabled = False
        self.refresh()
