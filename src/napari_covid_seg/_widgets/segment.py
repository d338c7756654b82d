"""The "Segment lesions" dock widget: pick a CT layer and a model version, run, cancel.

The model runs in napari's ``thread_worker`` over the engine's generator
(:func:`._segment_job.run_segmentation`); the widget touches layers only in the
worker's ``yielded``/``returned`` handlers, on the GUI thread. Progress shows in
napari's activity dock and in the widget; Cancel stops before the next batch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import CovidSegError
from ..io import WINDOWED
from ._burden_panel import burden_html
from ._layers import LayerCombo, is_ct_image, layer_volume, scrolled
from ._notify import (
    Confirm,
    ask_yes_no,
    describe_error,
    notify_error,
    notify_info,
    notify_warning,
)
from ._segment_job import SegmentOutcome, SegmentRequest, run_segmentation
from ._segment_layers import extra_layer_steps, put_lesion_layer

BROWSE = "Browse file..."
DEVICES = ("auto", "cpu", "cuda")
#: Pause between adding two optional result layers (lets napari redraw and handle input).
LAYER_STEP_MS = 15
KIND_ROLE = Qt.ItemDataRole.UserRole + 1  # "file" for browsed model files
NAME_ROLE = Qt.ItemDataRole.UserRole + 2  # the store name of a model version


class SegmentWidget(QWidget):
    """Dock widget "Segment lesions".

    Args:
        napari_viewer: the viewer (injected by napari).
        store: the model store (default: ``ModelStore()``).
        confirm: ``(title, text) -> bool`` asked before replacing an edited mask
            (default: a Qt message box).
        browse: ``() -> path or None`` for "Browse file..." (default: a file dialog).
    """

    def __init__(
        self,
        napari_viewer: Any,
        *,
        store: Any = None,
        confirm: Confirm | None = None,
        browse: Any = None,
    ) -> None:
        super().__init__()
        from ..models.store import ModelStore
        from ._torch_guard import prepare_torch

        prepare_torch()
        self.viewer = napari_viewer
        self.store = store if store is not None else ModelStore()
        self.confirm: Confirm = confirm or (lambda title, text: ask_yes_no(self, title, text))
        self.browse = browse or self._browse_dialog
        self.worker: Any = None
        self.last_outcome: SegmentOutcome | None = None
        self.labels_layer: Any = None
        self._request: SegmentRequest | None = None
        self._image: Any = None
        self._pbar: Any = None
        self._started = 0.0
        self._model_index = 0
        self._pending_layers: list[Any] = []
        self._reported = False
        self._build()
        self.refresh_models()
        self._update_device_note()

    # -- building --------------------------------------------------------------------------
    def _build(self) -> None:
        self.image_combo = LayerCombo(self.viewer, is_ct_image, self)
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Model version: the bundled default, your fine-tuned versions")
        self.model_combo.activated.connect(self._on_model_activated)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.model_note = QLabel()
        self.model_note.setWordWrap(True)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.device_combo.currentIndexChanged.connect(self._update_device_note)
        self.device_note = QLabel()
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.01, 0.99)
        self.threshold.setSingleStep(0.05)
        self.threshold.setDecimals(2)
        self.threshold.setValue(0.5)
        self.threshold.setToolTip("Voxels with lesion probability above this are lesion")
        self.batch_size = QSpinBox()
        self.batch_size.setRange(0, 512)
        self.batch_size.setSpecialValueText("auto")
        self.batch_size.setToolTip("Axial slices per batch; auto sizes it from free GPU memory")
        self.restrict = QCheckBox("restrict to lungs")
        self.restrict.setChecked(True)
        self.restrict.setToolTip(
            "Drop predictions outside the lungs (skipped, with the reason shown, when the "
            "lung mask looks wrong)"
        )
        self.tta = QCheckBox("test-time flips (2x time)")
        self.tta.setToolTip("Average the prediction with that of the right-left mirror image")
        self.want_probability = QCheckBox("probability")
        self.want_uncertainty = QCheckBox("uncertainty")
        self.want_attention = QCheckBox("attention")
        outputs = QHBoxLayout()
        for box in (self.want_probability, self.want_uncertainty, self.want_attention):
            outputs.addWidget(box)
        self.run_button = QPushButton("Segment")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m slices")
        self.progress.setValue(0)
        self.status = QLabel("Ready")
        self.status.setWordWrap(True)
        self.results = QLabel()
        self.results.setWordWrap(True)
        self.results.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        settings = QWidget()
        form = QFormLayout(settings)
        form.setContentsMargins(0, 0, 0, 0)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.addRow("CT image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("", self.model_note)
        form.addRow("Device", self.device_combo)
        form.addRow("", self.device_note)
        form.addRow("Threshold", self.threshold)
        form.addRow("Batch size", self.batch_size)
        form.addRow("", self.restrict)
        form.addRow("", self.tta)
        form.addRow("Add layers", outputs)
        # Settings scroll; the buttons, progress and results always stay in view.
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(scrolled(settings), 1)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.results)

    # -- models ----------------------------------------------------------------------------
    def refresh_models(self, select: str | None = None) -> None:
        """Reload the model list from the store; then select ``select`` (a name or path).

        Without ``select`` the current choice is kept when it still exists.
        """
        keep = select if select is not None else self.selected_model()
        browsed = [
            (self.model_combo.itemText(i), self.model_combo.itemData(i))
            for i in range(self.model_combo.count())
            if self.model_combo.itemData(i, KIND_ROLE) == "file"
        ]
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for info in self.store.list():
            label = info.name + (" (bundled)" if info.bundled else "")
            if info.val_dice is not None:
                label += f"  Dice {info.val_dice:.2f}"
            self.model_combo.addItem(label, str(info.path))
            self.model_combo.setItemData(self.model_combo.count() - 1, info.name, NAME_ROLE)
        for text, path in browsed:
            self._add_file_item(text, path)
        self.model_combo.addItem(BROWSE, None)
        self.model_combo.blockSignals(False)
        index = self._find_model(keep) if keep is not None else -1
        if index < 0 and keep is not None and select is not None and Path(str(keep)).exists():
            index = self._add_file_item(Path(str(keep)).name, str(keep))
        self.model_combo.setCurrentIndex(max(index, 0) if self.model_combo.count() > 1 else 0)
        self._on_model_changed()

    def _add_file_item(self, text: str, path: str) -> int:
        index = max(0, self.model_combo.count() - (1 if self._browse_index() >= 0 else 0))
        self.model_combo.insertItem(index, text, path)
        self.model_combo.setItemData(index, "file", KIND_ROLE)
        return index

    def _browse_index(self) -> int:
        return self.model_combo.findText(BROWSE)

    def _find_model(self, spec: str) -> int:
        for i in range(self.model_combo.count()):
            path = self.model_combo.itemData(i)
            name = self.model_combo.itemData(i, NAME_ROLE)
            if path is not None and (spec in (path, name) or _same_path(spec, path)):
                return i
        return -1

    def selected_model(self) -> str | None:
        """The chosen model version as a path ``ModelStore.resolve`` accepts, or None."""
        return self.model_combo.currentData()

    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.itemText(index) != BROWSE:
            self._model_index = index
            return
        path = self.browse()
        if path:
            self.model_combo.setCurrentIndex(self._add_file_item(Path(path).name, str(path)))
        else:
            self.model_combo.setCurrentIndex(min(self._model_index, self.model_combo.count() - 1))
        self._model_index = self.model_combo.currentIndex()

    def _on_model_changed(self, *_: Any) -> None:
        path = self.selected_model()
        if path is None:
            none = self.model_combo.count() <= 1
            self.model_note.setText(
                "No model installed: train one (napari-covid-seg train) or browse for a file."
                if none
                else ""
            )
            return
        self._model_index = self.model_combo.currentIndex()
        from ..models.metadata import read_model_json

        try:
            meta = read_model_json(Path(path)) if Path(path).is_dir() else {}
        except CovidSegError:
            meta = {}
        arch = (meta.get("architecture") or {}).get("name", "")
        threshold = (meta.get("preprocessing") or {}).get("threshold")
        if threshold is not None:
            self.threshold.setValue(float(threshold))
        description = str(meta.get("description", "")).strip()
        self.model_note.setText(f"{arch}: {description}" if description else arch)
        self.model_note.setToolTip(description)

    def _browse_dialog(self) -> str | None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Model weights",
            "",
            "Model files (model.json *.safetensors *.pt *.pth);;All files (*)",
        )
        return path or None

    # -- device ----------------------------------------------------------------------------
    def _update_device_note(self, *_: Any) -> None:
        from ..inference.device import describe_device, resolve_device

        choice = self.device_combo.currentText()
        if choice != "auto":
            self.device_note.setText("")
            return
        self.device_note.setText(f"auto → {describe_device(resolve_device('auto'))}")

    # -- running ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the model runs or its result layers are still being added."""
        return self.worker is not None or bool(self._pending_layers)

    def run(self) -> Any:
        """Start segmenting the chosen image; returns the worker (None if refused)."""
        if self.running:
            notify_warning("A segmentation is already running; cancel it or wait.")
            return None
        image = self.image_combo.current_layer()
        if image is None:
            notify_error(
                "No CT image to segment: open a CT (File > Open, or File > Open Sample > "
                "napari-covid-seg) and choose it under 'CT image'."
            )
            return None
        model = self.selected_model()
        if model is None:
            notify_error(
                "No model chosen: install or train a model version, or use 'Browse file...'."
            )
            return None
        device = self.device_combo.currentText()
        if device == "cuda":
            from ..inference.device import cuda_available

            if not cuda_available():
                notify_error(
                    "CUDA was chosen but PyTorch sees no NVIDIA GPU here. Choose 'auto' or "
                    "'cpu' (or install a CUDA build of PyTorch and an NVIDIA driver)."
                )
                return None
        try:
            volume = layer_volume(image)
        except CovidSegError as err:
            notify_error(f"Cannot segment '{image.name}': {err}")
            return None
        if volume.intensity == WINDOWED:
            notify_warning(
                f"'{image.name}' holds values 0..255, not Hounsfield units: it is treated as "
                "an image already in the lung window (HU = -1350 + value x 1500 / 255)."
            )
        self.results.setText("")  # the previous run's numbers would be stale
        batch = self.batch_size.value() or "auto"
        self._request = SegmentRequest(
            volume=volume,
            model=model,
            device=device,
            batch_size=batch,
            threshold=self.threshold.value(),
            restrict_to_lungs=self.restrict.isChecked(),
            tta=self.tta.isChecked(),
            uncertainty_map=self.want_uncertainty.isChecked(),
            attention=self.want_attention.isChecked(),
        )
        self._image = image
        return self._start(self._request)

    def _start(self, request: SegmentRequest) -> Any:
        from napari.qt.threading import create_worker
        from napari.utils import progress

        worker = create_worker(run_segmentation, request, _start_thread=False)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._reported = False
        self._pbar = progress(total=0, desc="Segmenting lesions")
        self._started = time.perf_counter()
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText("Loading the model and the lung mask...")
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the run before its next batch; no layer is added or changed.

        Only the job's cancel flag is set (the engine checks it before every
        batch and the job returns a "cancelled" outcome); ``worker.quit()``
        would drop the job's return value.
        """
        if self._request is None:
            return
        self._request.cancel.set()
        self.status.setText("Cancelling...")

    def _on_progress(self, step: Any) -> None:
        if self._reported:  # a late update (napari's progress bar may process events)
            return
        done, total = int(step[0]), int(step[1])
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)
        self.status.setText(
            "Cancelling..."
            if self._request is not None and self._request.cancel.is_set()
            else f"Segmenting: {done}/{total} slices"
        )
        if self._pbar is not None:
            if self._pbar.total != total:
                self._pbar.total = total
            self._pbar.update(done - self._pbar.n)

    def _on_aborted(self) -> None:
        self._report_cancelled()

    def _report_cancelled(self) -> None:
        self._reported = True
        self.results.setText("")
        self.status.setText("Cancelled; no layer was changed.")
        notify_info("Segmentation cancelled; no layer was added or changed.")

    def _on_returned(self, outcome: SegmentOutcome) -> None:
        self._reported = True
        self.last_outcome = outcome
        if outcome.cancelled:
            self._report_cancelled()
            return
        if outcome.error is not None:
            self.status.setText("Failed.")
            notify_error(describe_error(outcome.error, "Segmentation"))
            return
        image = self._image
        if image is None or image not in self.viewer.layers:
            notify_error("The CT layer was removed during segmentation; nothing was added.")
            return
        result = outcome.result
        self.labels_layer = put_lesion_layer(self.viewer, image, outcome, self.confirm)
        self._pending_layers = extra_layer_steps(
            self.viewer, image, outcome, probability=self.want_probability.isChecked()
        )
        QTimer.singleShot(LAYER_STEP_MS, self._add_next_layer)
        seconds = time.perf_counter() - self._started
        self.status.setText(
            f"Done in {seconds:.1f} s with '{result.model_name or 'the model'}' on "
            f"{result.device}, batch {result.batch_size}."
            + "".join(f"\n{m}" for m in result.messages)
        )
        if outcome.quantification is not None:
            self.results.setText(
                burden_html(outcome.quantification)
                + "<br><i>As segmented; the Correct widget keeps it current.</i>"
            )

    def _add_next_layer(self) -> None:
        """Add one optional result layer per event-loop turn; select the lesions at the end."""
        if self._pending_layers:
            self._pending_layers.pop(0)()
            QTimer.singleShot(LAYER_STEP_MS, self._add_next_layer)
            return
        if self.labels_layer is not None and self.labels_layer in self.viewer.layers:
            self.viewer.layers.selection.active = self.labels_layer

    def _on_finished(self) -> None:
        if not self._reported:  # stopped without a result (e.g. worker.quit())
            self._report_cancelled()
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.worker = None
        self._request = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def closeEvent(self, event: Any) -> None:
        self.cancel()
        super().closeEvent(event)


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, ValueError):
        return False
