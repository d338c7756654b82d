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

import napari.viewer
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QTimer

from ..errors import CovidSegError
from ..io import WINDOWED
from ._burden_panel import burden_html
from ._layers import (
    follow_layers,
    is_ct_image,
    layer_picker,
    layer_volume,
    scrolled,
    wrap_labels,
)
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

#: The "Browse file..." entry of the model box (its value: no model version).
BROWSE = "Browse file..."
DEVICES = ("auto", "cpu", "cuda")
#: Pause between adding two optional result layers (lets napari redraw and handle input).
LAYER_STEP_MS = 15


class SegmentWidget(Container):
    """Dock widget "Segment lesions" (a magicgui container).

    The form: ``image_combo`` (a ``napari.layers.Image`` picker that follows the
    viewer's layers), ``model_combo``, ``device_combo``, ``threshold``,
    ``batch_size`` (0 = auto), ``restrict``, ``tta``, ``want_probability``,
    ``want_uncertainty``, ``want_attention``; then ``run_button``,
    ``cancel_button``, ``progress``, ``status`` and ``results``. Set values with
    ``widget.threshold.value = 0.4`` etc.

    Args:
        napari_viewer: the viewer (injected by napari).
        store: the model store (default: ``ModelStore()``).
        confirm: ``(title, text) -> bool`` asked before replacing an edited mask
            (default: a Qt message box).
        browse: ``() -> path or None`` for "Browse file..." (default: a file dialog).
    """

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        *,
        store: Any = None,
        confirm: Confirm | None = None,
        browse: Any = None,
    ) -> None:
        super().__init__(labels=False)
        from ..models.store import ModelStore
        from ._torch_guard import prepare_torch

        prepare_torch()
        self.viewer = napari_viewer
        self.store = store if store is not None else ModelStore()
        self.confirm: Confirm = confirm or (
            lambda title, text: ask_yes_no(self.native, title, text)
        )
        self.browse = browse or self._browse_dialog
        self.worker: Any = None
        self.last_outcome: SegmentOutcome | None = None
        self.labels_layer: Any = None
        self._request: SegmentRequest | None = None
        self._image: Any = None
        self._pbar: Any = None
        self._started = 0.0
        self._model: str | None = None  # the last real model choice (for a cancelled browse)
        self._files: list[tuple[str, str]] = []  # model files chosen with "Browse file..."
        self._pending_layers: list[Any] = []
        self._store_choices: list[tuple[str, str]] = []
        self._names: dict[str, str] = {}
        self._reported = False
        self._build()
        follow_layers(napari_viewer, self._on_layers_changed)
        self.refresh_models()
        self._update_device_note()

    # -- building --------------------------------------------------------------------------
    def _build(self) -> None:
        from napari.layers import Image

        self.image_combo = layer_picker(
            self.viewer,
            Image,
            is_ct_image,
            name="image",
            label="CT image",
            tooltip="The CT Image layer to segment (follows the layer list)",
        )
        self.model_combo = ComboBox(
            name="model",
            label="Model",
            choices=self._model_choices,
            tooltip="Model version: the bundled default, your fine-tuned versions",
        )
        self.model_combo.changed.connect(self._on_model_chosen)
        # "Browse file..." chosen again while it is the current entry changes no value.
        self.model_combo.native.activated.connect(self._on_model_activated)
        self._just_browsed = False
        self.model_note = Label(name="model_note", label=" ")  # (an empty label means: the name)
        self.device_combo = ComboBox(name="device", label="Device", choices=DEVICES, value="auto")
        self.device_combo.changed.connect(self._update_device_note)
        self.device_note = Label(name="device_note", label=" ")
        self.threshold = FloatSpinBox(
            name="threshold",
            label="Threshold",
            value=0.5,
            min=0.01,
            max=0.99,
            step=0.05,
            tooltip="Voxels with lesion probability above this are lesion",
        )
        self.batch_size = SpinBox(
            name="batch_size",
            label="Batch size",
            value=0,
            min=0,
            max=512,
            tooltip="Axial slices per batch; 0 = auto (sized from free GPU memory)",
        )
        self.batch_size.native.setSpecialValueText("auto")
        self.restrict = CheckBox(
            name="restrict",
            text="restrict to lungs",
            value=True,
            tooltip="Drop predictions outside the lungs (skipped, with the reason shown, when "
            "the lung mask looks wrong)",
        )
        self.tta = ComboBox(
            name="tta",
            label="Flips",
            choices=[("auto (noisy scans)", "auto"), ("on (2x time)", "on"), ("off", "off")],
            value="auto",
            tooltip="Test-time flips: average the prediction with that of the right-left "
            "mirror image (twice the model time). auto: only when the lungs are noisy "
            "(above 50 HU, e.g. a sharp kernel at low dose), where they steady the result",
        )
        self.want_probability = CheckBox(name="want_probability", text="probability")
        self.want_uncertainty = CheckBox(name="want_uncertainty", text="uncertainty")
        self.want_attention = CheckBox(name="want_attention", text="attention")
        outputs = Container(
            name="outputs",
            label="Add layers",
            layout="vertical",  # one per line: the dock may be narrow
            labels=False,
            widgets=[self.want_probability, self.want_uncertainty, self.want_attention],
        )
        outputs.margins = (0, 0, 0, 0)
        self.run_button = PushButton(name="run_button", text="Segment")
        self.run_button.changed.connect(lambda *_: self.run())
        self.cancel_button = PushButton(name="cancel_button", text="Cancel", enabled=False)
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        self.progress = ProgressBar(name="progress", value=0, min=0, max=1, label="")
        self.progress.native.setFormat("%v / %m slices")
        self.status = Label(name="status", value="Ready")
        self.results = Label(name="results", value="")
        wrap_labels(self.model_note, self.device_note, self.status, self.results)

        # Settings scroll; the buttons, progress and results always stay in view. (Plain
        # QScrollArea: magicgui's scrollable container cannot shrink below its content.)
        self.settings = Container(
            name="settings",
            widgets=[
                self.image_combo,
                self.model_combo,
                self.model_note,
                self.device_combo,
                self.device_note,
                self.threshold,
                self.batch_size,
                self.restrict,
                self.tta,
                outputs,
            ],
        )
        self.settings.margins = (0, 0, 0, 0)
        buttons = Container(
            name="buttons",
            layout="horizontal",
            labels=False,
            widgets=[self.run_button, self.cancel_button],
        )
        buttons.margins = (0, 0, 0, 0)
        self.margins = (4, 4, 4, 4)
        self.extend([buttons, self.progress, self.status, self.results])
        self.native.layout().insertWidget(0, scrolled(self.settings.native), 1)

    def reset_choices(self, *_: Any) -> None:
        """Reload the layer choices (the settings sit in a scroll area of their own)."""
        super().reset_choices()
        self.settings.reset_choices()

    def _on_layers_changed(self, event: Any = None) -> None:
        """Reload the CT choices; a newly opened CT becomes the choice."""
        self.reset_choices()
        layer = getattr(event, "value", None)
        if getattr(event, "type", "") == "inserted" and is_ct_image(layer):
            self.image_combo.value = layer

    # -- models ----------------------------------------------------------------------------
    def refresh_models(self, select: str | None = None) -> None:
        """Reload the model list from the store; then select ``select`` (a name or path).

        Without ``select`` the current choice is kept when it still exists.
        """
        keep = select if select is not None else self.selected_model()
        choices: list[tuple[str, str]] = []
        self._names: dict[str, str] = {}
        for info in self.store.list():
            label = info.name + (" (bundled)" if info.bundled else "")
            if info.val_dice is not None:
                label += f"  Dice {info.val_dice:.2f}"
            choices.append((label, str(info.path)))
            self._names[str(info.path)] = info.name
        self._store_choices = choices
        pick = self._find_model(keep) if keep is not None else None
        if pick is None and keep is not None and select is not None and Path(str(keep)).exists():
            pick = self._add_file(str(keep))
        self._set_model_choices()
        all_choices = self._model_values()
        if pick is None:
            pick = all_choices[0] if len(all_choices) > 1 else BROWSE
        with self.model_combo.changed.blocked():
            self.model_combo.value = pick
        self._on_model_changed()

    def _model_values(self) -> list[str]:
        return [value for _, value in self._store_choices + self._files] + [BROWSE]

    def _model_choices(self, *_: Any) -> list[tuple[str, str]]:
        return [*self._store_choices, *self._files, (BROWSE, BROWSE)]

    def _set_model_choices(self) -> None:
        """Reload the model box (items in order: store versions, browsed files, Browse)."""
        combo = self.model_combo
        with combo.changed.blocked():
            keep = combo.value
            combo.native.clear()  # magicgui keeps old items first; rebuild in order
            combo.choices = self._model_choices
            values = self._model_values()
            combo.value = keep if keep in values else values[0]

    def _add_file(self, path: str) -> str:
        if all(value != path for _, value in self._files):
            self._files.append((Path(path).name, path))
        return path

    def _find_model(self, spec: str) -> str | None:
        for _, path in self._store_choices + self._files:
            if spec in (path, self._names.get(path)) or _same_path(spec, path):
                return path
        return None

    def selected_model(self) -> str | None:
        """The chosen model version as a path ``ModelStore.resolve`` accepts, or None."""
        value = self.model_combo.value
        return None if value in (None, BROWSE) else str(value)

    def _on_model_chosen(self, value: Any) -> None:
        if value == BROWSE:
            self._just_browsed = True
            self._browse_for_model()
        else:
            self._on_model_changed()

    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.native.itemText(index) == BROWSE and not self._just_browsed:
            self._browse_for_model()
        self._just_browsed = False

    def _on_model_changed(self, *_: Any) -> None:
        path = self.selected_model()
        if path is None:
            none = len(self._model_values()) <= 1
            self.model_note.value = (
                "No model installed: train one (napari-covid-seg train) or browse for a file."
                if none
                else ""
            )
            return
        self._model = path
        from ..models.metadata import read_model_json

        try:
            meta = read_model_json(Path(path)) if Path(path).is_dir() else {}
        except CovidSegError:
            meta = {}
        arch = (meta.get("architecture") or {}).get("name", "")
        threshold = (meta.get("preprocessing") or {}).get("threshold")
        if threshold is not None:
            self.threshold.value = float(threshold)
        description = str(meta.get("description", "")).strip()
        self.model_note.value = f"{arch}: {description}" if description else arch
        self.model_note.tooltip = description or None

    def _browse_for_model(self) -> None:
        """ "Browse file..." was chosen: add the file picked, or go back to the last model."""
        path = self.browse()
        if path:
            pick = self._add_file(str(path))
            self._set_model_choices()
        else:
            pick = self._model if self._model in self._model_values() else BROWSE
        with self.model_combo.changed.blocked():
            self.model_combo.value = pick
        self._on_model_changed()

    def _browse_dialog(self) -> str | None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(
            self.native,
            "Model weights",
            "",
            "Model files (model.json *.safetensors *.pt *.pth);;All files (*)",
        )
        return path or None

    # -- device ----------------------------------------------------------------------------
    def _update_device_note(self, *_: Any) -> None:
        from ..inference.device import describe_device, resolve_device

        if self.device_combo.value != "auto":
            self.device_note.value = ""
            return
        self.device_note.value = f"auto → {describe_device(resolve_device('auto'))}"

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
        image = self.image_combo.value
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
        device = self.device_combo.value
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
        self.results.value = ""  # the previous run's numbers would be stale
        batch = self.batch_size.value or "auto"
        self._request = SegmentRequest(
            volume=volume,
            model=model,
            device=device,
            batch_size=batch,
            threshold=self.threshold.value,
            restrict_to_lungs=self.restrict.value,
            tta={"on": True, "off": False}.get(self.tta.value),
            uncertainty_map=self.want_uncertainty.value,
            attention=self.want_attention.value,
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
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.status.value = "Loading the model and the lung mask..."
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
        self.status.value = "Cancelling..."

    def _on_progress(self, step: Any) -> None:
        if self._reported:  # a late update (napari's progress bar may process events)
            return
        done, total = int(step[0]), int(step[1])
        self.progress.max = max(total, 1)
        self.progress.value = done
        self.status.value = (
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
        self.results.value = ""
        self.status.value = "Cancelled; no layer was changed."
        notify_info("Segmentation cancelled; no layer was added or changed.")

    def _on_returned(self, outcome: SegmentOutcome) -> None:
        self._reported = True
        self.last_outcome = outcome
        if outcome.cancelled:
            self._report_cancelled()
            return
        if outcome.error is not None:
            self.status.value = "Failed."
            notify_error(describe_error(outcome.error, "Segmentation"))
            return
        image = self._image
        if image is None or image not in self.viewer.layers:
            notify_error("The CT layer was removed during segmentation; nothing was added.")
            return
        result = outcome.result
        self.labels_layer = put_lesion_layer(self.viewer, image, outcome, self.confirm)
        self._pending_layers = extra_layer_steps(
            self.viewer, image, outcome, probability=self.want_probability.value
        )
        QTimer.singleShot(LAYER_STEP_MS, self._add_next_layer)
        seconds = time.perf_counter() - self._started
        self.status.value = (
            f"Done in {seconds:.1f} s with '{result.model_name or 'the model'}' on "
            f"{result.device}, batch {result.batch_size}."
            + _tta_line(result)
            + "".join(f"\n{m}" for m in result.messages)
        )
        if outcome.quantification is not None:
            self.results.value = (
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
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    def close(self) -> None:
        """Cancel a run and close."""
        self.cancel()
        super().close()


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, ValueError):
        return False


def _tta_line(result: object) -> str:
    """A status line when the automatic mode turned test-time flips on, else nothing."""
    tta = getattr(result, "tta", None) or {}
    if tta.get("mode") == "auto" and tta.get("on"):
        return f"\nTest-time flips on: {tta.get('reason', 'noisy scan')}."
    return ""
