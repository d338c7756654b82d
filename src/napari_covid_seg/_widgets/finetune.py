"""The "Fine-tune model" dock widget: close the human-in-the-loop.

Pick a base model version, the dataset folder(s) written by "Export for
training", epochs, device and (optionally) a replay folder of the base's
training data; Start runs :mod:`napari_covid_seg.training.worker` in a
separate process (``QProcess``: GPU memory is released when it ends and a
crash cannot take napari down) and plots its JSON progress events (loss and
validation Dice per epoch, time left) as they arrive. Cancel sends SIGTERM
(and ``stop`` on the worker's stdin): the epoch in progress is dropped and the
best version so far is kept.

When the run finishes the worker has registered the new version in the model
store; the widget shows old vs new Dice on held-out corrected slices that
neither version trained or was selected on, and selects the new version in the
Segment widget docked in the same viewer only when that comparison exists and
(by default) the new version does not lose it; otherwise it says so and offers
"Use <new>" instead, with a one-click Roll back to the previously selected
model. Any failure (empty dataset, mismatched image/mask, out of memory, the
process dying) ends in one napari notification and leaves the Segment widget's
selection untouched. Everything that is not Qt (run state, event texts, the
switch decision, dataset counts) is in :mod:`napari_covid_seg.training.finetune_run`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import napari.viewer
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from qtpy.QtCore import QProcess, QProcessEnvironment, QTimer
from qtpy.QtWidgets import QApplication, QCompleter, QFileDialog, QSizePolicy

from ..training.finetune_run import (
    DEFAULT_EPOCHS,
    DEVICES,
    LEARNING_RATES,
    MIN_SAMPLES_PER_EPOCH,
    DatasetSummary,
    RunState,
    decide_switch,
    display_name,
    event_status,
    format_seconds,
    parse_lr,
    replay_suggestion,
    same_path,
    summarize_dataset,
    worker_arguments,
)
from ._layers import scrolled, wrap_labels
from ._notify import notify_error, notify_info, notify_warning
from ._plot import TrainingPlot

__all__ = [
    "DEFAULT_EPOCHS",
    "DEVICES",
    "LEARNING_RATES",
    "MIN_SAMPLES_PER_EPOCH",
    "DatasetSummary",
    "FineTuneWidget",
    "RunState",
    "find_segment_widget",
    "format_seconds",
    "replay_suggestion",
    "summarize_dataset",
]

#: Seconds to wait for a clean stop after Cancel before the process is killed.
CANCEL_GRACE_S = 120
_TOOLTIP_ROLE = 3  # Qt.ItemDataRole.ToolTipRole


def find_segment_widget(viewer: Any) -> Any | None:
    """The Segment widget docked in ``viewer`` (has ``refresh_models`` and ``selected_model``)."""
    window = getattr(viewer, "window", None)
    docks = getattr(window, "dock_widgets", None) or {}
    for widget in list(docks.values()):
        for cand in (widget, getattr(widget, "native", None)):
            if (
                cand is not None
                and callable(getattr(cand, "refresh_models", None))
                and callable(getattr(cand, "selected_model", None))
            ):
                return cand
    return None


# -- the widget ------------------------------------------------------------------------------------


class FineTuneWidget(Container):
    """Dock widget "Fine-tune model" (a magicgui container); see the module docstring.

    The form: ``base_combo``, ``data_list`` (the dataset folders), ``epochs_spin``,
    ``lr_edit`` ("auto" or a number), ``device_combo``, ``replay_check``,
    ``replay_edit``, ``name_edit``, ``only_if_better``; then ``start_button``,
    ``cancel_button``, ``progress``, ``status_label``, ``rollback_button``. Set
    values with ``widget.epochs_spin.value = 2`` etc.

    Public for scripts and tests: :meth:`add_dataset`, :meth:`remove_dataset`,
    :meth:`start`, :meth:`cancel`, :meth:`rollback`, :meth:`is_running`, :attr:`run`
    (the last :class:`RunState`), :attr:`plot`, :attr:`extra_worker_args`
    (appended to the worker command line, e.g. ``["--amp", "off"]``).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.run: RunState | None = None
        self.extra_worker_args: list[str] = []
        self.rollback_target: str | None = None
        self.new_model: str | None = None
        self._using_new = False
        self._replay_rotate_k: int | None = None
        self._replay_suggested: str | None = None
        self._replay_user_choice = False  # the user ticked/unticked replay themselves
        self._process: QProcess | None = None
        self._bases: list[tuple[str, str]] = []  # (label, store name) of the base list
        self._base_paths: dict[str, str] = {}  # store name -> folder
        self._datasets: list[str] = []
        self._kill_timer = QTimer(self.native)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._kill)
        self._build_ui()
        self.refresh_models()
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    # -- UI ------------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        # Settings, plot and result scroll; Start/Cancel, progress, status and Roll back
        # stay in view, so the widget works docked under the others on a laptop screen.
        self.base_combo = ComboBox(
            name="base",
            label="Base model",
            choices=lambda _w: self._bases,
            tooltip="The model version to continue training from",
        )
        self.base_combo.changed.connect(self._on_base_changed)
        refresh = PushButton(name="refresh", text="↻", tooltip="Reload the model list")
        refresh.native.setFixedWidth(28)
        refresh.changed.connect(lambda *_: self.refresh_models())
        base_row = _row("base_row", "Base model", self.base_combo, refresh)

        self.data_list = Select(
            name="data_list",
            choices=lambda _w: self._datasets,
            tooltip="Folders written by 'Export for training' (nnU-Net v2 raw)",
        )
        self.data_list.native.setMaximumHeight(64)
        add = PushButton(name="add_folder", text="Add folder…")
        add.changed.connect(lambda *_: self._browse_dataset())
        remove = PushButton(name="remove_folder", text="Remove")
        remove.changed.connect(lambda *_: self._remove_dataset())
        data_box = Container(
            name="data",
            label="Corrected data",
            labels=False,
            widgets=[self.data_list, _row("data_buttons", "", add, remove)],
        )
        data_box.margins = (0, 0, 0, 0)
        # label " ": magicgui shows the name for an empty label
        self.data_summary = Label(name="data_summary", label=" ", value="No dataset folder yet")

        self.epochs_spin = SpinBox(
            name="epochs",
            label="Epochs",
            value=DEFAULT_EPOCHS,
            min=1,
            max=1000,
            tooltip="Upper bound; early stopping ends sooner when validation Dice stops improving",
        )
        self.lr_edit = LineEdit(
            name="learning_rate",
            label="Learning rate",
            value=LEARNING_RATES[0],
            tooltip="AdamW, cosine decay: 'auto' or a number, e.g. "
            + ", ".join(LEARNING_RATES[1:]),
        )
        self.lr_edit.native.setCompleter(QCompleter(list(LEARNING_RATES), self.lr_edit.native))
        self.device_combo = ComboBox(name="device", label="Device", choices=DEVICES)

        self.replay_check = CheckBox(
            name="replay_check",
            text="Replay earlier training data",
            tooltip="Mix a sample of the base model's training data into each epoch so it "
            "does not forget what it knew (slower; on by default where that data is on this "
            "computer: it limited the damage of fine-tuning on a few slices in "
            "docs/loop_experiment.md)",
        )
        self.replay_check.native.clicked.connect(self._on_replay_clicked)  # the user's click
        self.replay_edit = LineEdit(name="replay_edit")
        self.replay_edit.native.setPlaceholderText("folder with the base model's training data")
        self.replay_edit.changed.connect(self._on_replay_edited)
        browse = PushButton(name="replay_browse", text="…")
        browse.native.setFixedWidth(28)
        browse.changed.connect(lambda *_: self._browse_replay())
        replay_box = Container(
            name="replay",
            label="Replay",
            labels=False,
            widgets=[self.replay_check, _row("replay_row", "", self.replay_edit, browse)],
        )
        replay_box.margins = (0, 0, 0, 0)
        self.name_edit = LineEdit(name="new_name", label="New name")
        self.name_edit.native.setPlaceholderText("<base>-ft")
        self.only_if_better = CheckBox(
            name="only_if_better",
            text="Use it only if held-out Dice does not drop",
            value=True,
            tooltip="Select the new version in the Segment widget only if it beats the base "
            "model on the same validation slices (it is registered either way)",
        )
        form = Container(
            name="form",
            widgets=[
                base_row,
                data_box,
                self.data_summary,
                self.epochs_spin,
                self.lr_edit,
                self.device_combo,
                replay_box,
                self.name_edit,
                self.only_if_better,
            ],
        )
        form.margins = (0, 0, 0, 0)
        self.result_label = Label(name="result_label", value="No fine-tuned model yet")
        result = Container(name="result", label="Result", widgets=[self.result_label], labels=False)
        self.body = Container(name="body", labels=False, widgets=[form])
        self.body.margins = (0, 0, 0, 0)
        # The loss/Dice plot is matplotlib (no magicgui widget), embedded in the body.
        self.plot = TrainingPlot(self.body.native)
        self.plot.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.plot.setMinimumHeight(150)
        self.body.native.layout().addWidget(self.plot, 1)
        self.body.native.layout().addWidget(result.native)
        self.result_container = result

        self.start_button = PushButton(name="start_button", text="Start fine-tuning")
        self.start_button.changed.connect(lambda *_: self.start())
        self.cancel_button = PushButton(
            name="cancel_button",
            text="Cancel",
            enabled=False,
            tooltip="Stop after the current batch and keep the best version",
        )
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        buttons = Container(
            name="buttons",
            layout="horizontal",
            labels=False,
            widgets=[self.start_button, self.cancel_button],
        )
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(name="progress", value=0, min=0, max=1000, label="")
        self.progress.native.setFormat("")
        self.status_label = Label(name="status_label", value="Idle")
        self.rollback_button = PushButton(
            name="rollback_button",
            text="Roll back",
            enabled=False,
            tooltip="Select the previous model in the Segment widget again",
        )
        self.rollback_button.changed.connect(lambda *_: self._on_rollback_clicked())
        wrap_labels(self.data_summary, self.result_label, self.status_label)

        self.margins = (4, 4, 4, 4)
        self.extend([buttons, self.progress, self.status_label, self.rollback_button])
        # The body scrolls and asks for little height, so the Correct widget above gets it.
        self.native.layout().insertWidget(0, scrolled(self.body.native, hint_height=320), 1)

    def reset_choices(self, *_: Any) -> None:
        super().reset_choices()
        self.body.reset_choices()  # the body sits in a scroll area of its own

    # -- models ----------------------------------------------------------------------------------

    def refresh_models(self, select: str | None = None) -> None:
        """Reload the store's model versions; keep (or set) the selection."""
        from ..models.store import ModelStore

        keep = select or self.selected_base()
        try:
            infos = [i for i in ModelStore().list() if i.error is None]
        except Exception as err:
            infos = []
            self.status_label.value = f"Cannot list models: {err}"
        self._bases, self._base_paths = [], {}
        for info in infos:
            dice = info.val_dice
            label = info.name + (f"  (val Dice {dice:.3f})" if dice is not None else "")
            if info.parent:
                label += f"  ← {info.parent}"
            self._bases.append((label, info.name))
            self._base_paths[info.name] = str(info.path)
        if keep is None:
            seg = find_segment_widget(self.viewer)
            keep = _call(seg, "selected_model") if seg is not None else None
        with self.base_combo.changed.blocked():
            self.base_combo.native.clear()  # magicgui keeps old items first; rebuild in order
            self.base_combo.reset_choices()
            name = self._find_base(keep) if keep is not None else None
            if name is None and self._bases:
                name = self._bases[0][1]
            if name is not None:
                self.base_combo.value = name
        for i, (_, name) in enumerate(self._bases):
            self.base_combo.native.setItemData(i, self._base_paths[name], _TOOLTIP_ROLE)
        self._on_base_changed()

    def _find_base(self, spec: str) -> str | None:
        """Store name of a model given by store name or folder path (None if not listed)."""
        for _, name in self._bases:
            path = self._base_paths[name]
            if spec in (name, path) or same_path(str(spec), path):
                return name
        return None

    def selected_base(self) -> str | None:
        """Store name of the chosen base model (None when the store is empty)."""
        data = self.base_combo.value
        return None if data is None else str(data)

    def _on_base_changed(self, *_: Any) -> None:
        from ..models.store import ModelStore

        name = self.selected_base()
        suggestion = None
        if name is not None:
            try:
                suggestion = replay_suggestion(ModelStore().resolve(name))
            except Exception:
                suggestion = None
        current = self.replay_edit.value.strip()
        if suggestion is not None and (not current or current == self._replay_suggested):
            self._replay_suggested = suggestion[0]
            self.replay_edit.value = suggestion[0]
            self._replay_rotate_k = suggestion[1]
            if not self._replay_user_choice:
                self.replay_check.value = True
        self._update_start_enabled()

    def _on_replay_clicked(self, checked: bool) -> None:
        self._replay_user_choice = True

    # -- datasets --------------------------------------------------------------------------------

    def datasets(self) -> list[str]:
        """The dataset folders listed, in order."""
        return list(self._datasets)

    def add_dataset(self, folder: str | os.PathLike) -> DatasetSummary:
        """Add a dataset folder (once) and update the summary line."""
        text = os.fspath(folder)
        if text not in self._datasets:
            self._datasets.append(text)
            self.data_list.reset_choices()
        self._update_summary()
        return summarize_dataset(text)

    def remove_dataset(self, folder: str | os.PathLike) -> None:
        """Take a dataset folder off the list."""
        text = os.fspath(folder)
        if text in self._datasets:
            self._datasets.remove(text)
            self.data_list.reset_choices()
        self._update_summary()

    def _browse_dataset(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self.native, "Dataset folder (Export for training)"
        )
        if folder:
            self.add_dataset(folder)

    def _remove_dataset(self) -> None:
        for folder in list(self.data_list.value):
            self.remove_dataset(folder)

    def _update_summary(self) -> None:
        sums = [summarize_dataset(d) for d in self.datasets()]
        if not sums:
            self.data_summary.value = "No dataset folder yet"
        else:
            cases = sum(s.n_cases for s in sums if not s.problem)
            slices = sum(s.n_slices for s in sums if not s.problem)
            lines = [s.text() for s in sums]
            if len(sums) > 1:
                lines.append(f"total: {cases} case(s), {slices} slices")
            self.data_summary.value = "\n".join(lines)
        self._update_start_enabled()

    def _browse_replay(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.native, "The base model's training data")
        if folder:
            self.replay_edit.value = folder
            self.replay_check.value = True

    def _on_replay_edited(self, text: str) -> None:
        text = str(text)
        if text.strip() != (self._replay_suggested or ""):
            self._replay_rotate_k = None

    def _update_start_enabled(self) -> None:
        folders = self.datasets()
        usable = bool(folders) and not any(summarize_dataset(d).problem for d in folders)
        ready = self.selected_base() is not None and usable
        self.start_button.enabled = ready and not self.is_running()
        self.start_button.tooltip = (
            None
            if ready
            else "Add a dataset folder written by 'Export for training' (see the line above)"
            if self.selected_base() is not None
            else "Choose a base model first"
        )

    # -- running ---------------------------------------------------------------------------------

    def is_running(self) -> bool:
        return (
            self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning
        )

    def worker_arguments(self) -> list[str]:
        """The worker's command line (after ``python -m napari_covid_seg.training.worker``)."""
        replay = self.replay_edit.value.strip() if self.replay_check.value else None
        return worker_arguments(
            self.selected_base() or "",
            self.datasets(),
            epochs=self.epochs_spin.value,
            lr=self.lr_edit.value.strip(),
            device=self.device_combo.value,
            replay=replay or None,
            replay_rotate_k=self._replay_rotate_k,
            name=self.name_edit.value.strip() or None,
            extra=self.extra_worker_args,
        )

    def start(self) -> None:
        """Start the worker process (no-op while one runs)."""
        if self.is_running():
            return
        base = self.selected_base()
        if base is None or not self.datasets():
            self._notify_error("Choose a base model and at least one dataset folder first")
            return
        bad = [s for s in map(summarize_dataset, self.datasets()) if s.problem]
        if bad:
            self._notify_error(f"Cannot fine-tune on {bad[0].text()}; remove it or fix it first")
            return
        if parse_lr(self.lr_edit.value.strip()) is None:
            self._notify_error(
                f"Learning rate {self.lr_edit.value!r} is not a number between 0 and 1 (e.g. 1e-4)"
            )
            return
        if self._process is not None:  # the finished process of the previous run
            self._process.deleteLater()
        self.run = RunState(base=base)
        self.plot.clear()
        self.progress.value = 0
        self.progress.native.setFormat("starting…")
        self.result_label.value = "Running…"
        self.status_label.value = "Starting the fine-tuning process…"
        proc = QProcess(self.native)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        proc.setProcessEnvironment(env)
        proc.setProgram(sys.executable)
        proc.setArguments(["-m", "napari_covid_seg.training.worker", *self.worker_arguments()])
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_process_error)
        self._process = proc
        self.start_button.enabled = False
        self.cancel_button.enabled = True
        proc.start()

    def cancel(self) -> None:
        """Ask the worker to stop after the current batch (the best version is kept)."""
        proc = self._process
        if proc is None or not self.is_running() or self.run is None:
            return
        self.run.cancelled = True
        self.cancel_button.enabled = False
        self.status_label.value = "Stopping after the current batch; keeping the best version…"
        proc.write(b"stop\n")
        proc.terminate()  # SIGTERM on POSIX; the stdin line covers Windows
        self._kill_timer.start(CANCEL_GRACE_S * 1000)

    def shutdown(self, timeout_ms: int = 15_000) -> None:
        """Stop a running worker and wait for it (napari is closing)."""
        proc = self._process
        if proc is None or proc.state() == QProcess.ProcessState.NotRunning:
            return
        if self.run is not None:
            self.run.cancelled = True
        proc.write(b"stop\n")
        proc.terminate()
        if not proc.waitForFinished(timeout_ms):
            proc.kill()
            proc.waitForFinished(5000)

    def _kill(self) -> None:
        if self.is_running() and self._process is not None:
            self._process.kill()

    # -- process output --------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        if self._process is None or self.run is None:
            return
        chunk = bytes(self._process.readAllStandardOutput().data()).decode("utf-8", "replace")
        for event in self.run.feed(chunk):
            self._handle_event(event)

    def _read_stderr(self) -> None:
        if self._process is None or self.run is None:
            return
        chunk = bytes(self._process.readAllStandardError().data()).decode("utf-8", "replace")
        self.run.add_stderr(chunk)

    def _handle_event(self, event: dict[str, Any]) -> None:
        view = event_status(event)
        if view.status is not None:
            self.status_label.value = view.status
        if view.progress is not None:
            self.progress.value = int(1000 * view.progress)
        if view.progress_text is not None:
            self.progress.native.setFormat(view.progress_text)
        if view.epoch is not None:
            e = view.epoch
            self.plot.add_epoch(
                e["epoch"], e.get("train_loss"), e.get("val_loss"), e.get("val_dice")
            )
        if event.get("event") == "done":
            self.plot.set_baseline((event.get("comparison") or {}).get("old_dice"))

    def _on_process_error(self, error: Any) -> None:
        if error == QProcess.ProcessError.FailedToStart and self.run is not None:
            self.run.finished = True
            self._reset_buttons()
            self._notify_error(
                f"Could not start the fine-tuning process ({sys.executable}): "
                f"{self._process.errorString() if self._process else error}"
            )

    def _on_finished(self, exit_code: int, exit_status: Any) -> None:
        self._kill_timer.stop()
        self._read_stdout()
        self._read_stderr()
        run = self.run
        if run is None or run.finished:
            return
        run.finished = True
        run.exit_code = int(exit_code)
        run.crashed = exit_status == QProcess.ExitStatus.CrashExit
        self._reset_buttons()
        if run.done is not None and run.done.get("name"):
            self._finish_success(run.done)
            return
        self.progress.value = 0
        self.progress.native.setFormat("")
        kind, message = run.failure_message()
        if kind == "cancelled":
            self.status_label.value = "Cancelled"
            self.result_label.value = (
                "Cancelled before the first epoch finished; nothing was saved."
                if run.error is not None
                else "Cancelled; nothing was saved."
            )
            self._notify_info(message)
            return
        self._fail(message)

    def _reset_buttons(self) -> None:
        self.cancel_button.enabled = False
        self._update_start_enabled()

    def _fail(self, message: str) -> None:
        self.status_label.value = "Failed"
        self.result_label.value = message
        self._notify_error(message)

    def _finish_success(self, done: dict[str, Any]) -> None:
        name = str(done["name"])
        self.new_model = name
        self.progress.value = 1000
        self.progress.native.setFormat("done")
        metrics = done.get("metrics") or {}
        decision = decide_switch(done, self.only_if_better.value)
        compare, how, switch = decision.compare_text, decision.how, decision.switch
        seg = find_segment_widget(self.viewer)
        previous = _call(seg, "selected_model") if seg is not None else None
        self.rollback_target = str(previous) if previous else done.get("base")
        if seg is None:
            where = "open the Segment widget to use it"
        elif switch:
            seg.refresh_models(select=name)
            where = "selected in the Segment widget"
        else:
            seg.refresh_models()  # list it, keep the current choice
            where = (
                f"not selected: it does not beat '{display_name(self.rollback_target)}' on "
                "the held-out slices"
                if decision.compared
                else "not selected: no held-out slices to compare on"
            )
        self._using_new = seg is not None and switch
        self.refresh_models(select=name if switch else None)
        self._update_rollback_button(seg is not None)
        self.status_label.value = f"Done: {how}; best epoch {metrics.get('best_epoch')}"
        self.result_label.value = (
            f"New version '{name}' (parent {done.get('parent')}), {where}.\n{compare}"
        )
        message = f"Fine-tuned model '{name}' registered; {where}. {compare}"
        if switch:
            self._notify_info(message)
        else:
            notify_warning(message + ". Use the Fine-tune widget's button to use it anyway.")

    def _update_rollback_button(self, enabled: bool = True) -> None:
        if self._using_new:
            self.rollback_button.text = f"Roll back to {display_name(self.rollback_target)}"
            self.rollback_button.tooltip = "Select the previous model in the Segment widget"
        else:
            self.rollback_button.text = f"Use {self.new_model}"
            self.rollback_button.tooltip = "Select the fine-tuned model in the Segment widget"
        self.rollback_button.enabled = (
            enabled and self.new_model is not None and self.rollback_target is not None
        )

    def _on_rollback_clicked(self) -> None:
        if self._using_new:
            self.rollback()
        else:
            self.use_new_model()

    def rollback(self) -> None:
        """Select the model that was in use before the last fine-tune in the Segment widget."""
        target = self.rollback_target
        seg = find_segment_widget(self.viewer)
        if target is None or seg is None:
            return
        seg.refresh_models(select=target)
        self.refresh_models(select=target)
        self._using_new = False
        self._update_rollback_button()
        self.status_label.value = (
            f"Rolled back: the Segment widget uses '{display_name(target)}' again "
            f"('{self.new_model}' stays in the model store)."
        )

    def use_new_model(self) -> None:
        """Select the last fine-tuned version in the Segment widget."""
        seg = find_segment_widget(self.viewer)
        if self.new_model is None or seg is None:
            return
        seg.refresh_models(select=self.new_model)
        self.refresh_models(select=self.new_model)
        self._using_new = True
        self._update_rollback_button()
        self.status_label.value = f"The Segment widget uses '{self.new_model}'."

    # -- notifications ---------------------------------------------------------------------------

    def _notify_error(self, message: str) -> None:
        notify_error(message)

    def _notify_info(self, message: str) -> None:
        notify_info(message)


def _row(name: str, label: str, *widgets: Any) -> Container:
    """Widgets side by side (a horizontal magicgui container without labels)."""
    row = Container(name=name, label=label, layout="horizontal", labels=False, widgets=widgets)
    row.margins = (0, 0, 0, 0)
    return row


def _call(obj: Any, method: str) -> Any:
    try:
        return getattr(obj, method)()
    except Exception:
        return None
