"""The "Fine-tune model" widget in a real napari: run, plot, select, roll back, cancel, fail.

The worker runs as a real subprocess (QProcess) on the GUI tests' tiny phantom
model (input 64) and one exported phantom case, so each run takes seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from napari.utils.notifications import notification_manager

from napari_covid_seg._widgets.finetune import (
    FineTuneWidget,
    find_segment_widget,
    format_seconds,
    summarize_dataset,
)
from napari_covid_seg._widgets.segment import SegmentWidget
from napari_covid_seg.io.dataset_export import export_case
from napari_covid_seg.io.phantom import make_phantom
from napari_covid_seg.models.store import ModelStore

RUN_TIMEOUT_MS = 240_000
FAST = ["--amp", "off", "--seed", "0"]


@pytest.fixture
def notes():
    """Notifications shown during the test: list of (severity, message)."""
    seen: list[tuple[str, str]] = []

    def record(notification):
        seen.append((str(notification.severity), str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def export_phantom(folder, seed: int = 3, reviewed=range(3, 13)):
    """One phantom case, its truth as the 'corrected' mask, 10 reviewed slices."""
    image, truth = make_phantom(shape=(16, 96, 96), spacing=(2.5, 3.7, 3.7), seed=seed)
    export_case(folder, image, truth.data, case_id=f"corrected{seed}", reviewed_slices=reviewed)
    return folder


def docked(viewer, tiny_model, qtbot):
    """A Segment widget using the tiny model and a Fine-tune widget, docked in ``viewer``."""
    store = ModelStore()
    store.register(tiny_model)
    seg = SegmentWidget(viewer, store=store)
    viewer.window.add_dock_widget(seg, name="Segment lesions")
    seg.refresh_models(select="tiny-phantom")
    ft = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(ft, name="Fine-tune model")
    ft.device_combo.value = "cpu"
    ft.extra_worker_args = list(FAST)
    ft.lr_edit.value = "1e-3"
    ft.only_if_better.value = False  # a 2-slice validation decides nothing reliably
    return store, seg, ft


def user_models(store) -> list[str]:
    return [i.name for i in store.list() if not i.bundled]


def wait_finished(qtbot, ft) -> None:
    qtbot.waitUntil(lambda: ft.run is not None and ft.run.finished, timeout=RUN_TIMEOUT_MS)


def test_finetune_run_selects_new_version_and_rolls_back(
    make_napari_viewer, qtbot, tiny_model, tmp_path, notes
):
    viewer = make_napari_viewer()
    store, seg, ft = docked(viewer, tiny_model, qtbot)
    assert find_segment_widget(viewer) is seg
    old_path = seg.selected_model()
    assert ft.selected_base() == "tiny-phantom"  # follows the Segment widget's choice
    assert not ft.start_button.enabled  # no dataset yet
    data = export_phantom(tmp_path / "export")
    summary = ft.add_dataset(data)
    assert (summary.n_cases, summary.n_slices, summary.n_reviewed_cases) == (1, 10, 1)
    assert "1 case(s), 10 slices" in ft.data_summary.value
    assert ft.start_button.enabled
    ft.epochs_spin.value = 2
    args = ft.worker_arguments()
    assert args[:2] == ["--base", "tiny-phantom"] and "--stdin-control" in args
    assert args[args.index("--lr") + 1] == "1e-3"
    assert args[args.index("--min-samples-per-epoch") + 1] == "16"
    assert ["--data", str(data)] == args[args.index("--data") : args.index("--data") + 2]

    ft.start()
    assert ft.is_running() and ft.cancel_button.enabled and not ft.start_button.enabled
    wait_finished(qtbot, ft)
    run = ft.run
    assert run.exit_code == 0 and run.error is None, run.stderr[-2000:]
    epochs = [e for e in run.events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    # the plot shows every epoch as it came, and the base's Dice once known
    assert ft.plot.n_points() == 2 and ft.plot.epochs == [1, 2]
    assert ft.plot.val_dice == pytest.approx([e["val_dice"] for e in epochs])
    xs, ys = ft.plot._l_dice.get_data()
    assert list(xs) == [1, 2] and np.allclose(ys, ft.plot.val_dice)
    assert ft.plot.baseline == pytest.approx(run.done["comparison"]["old_dice"])
    assert ft.progress.value == 1000

    # registered with the right parent and selected in the Segment widget
    info = store.info("tiny-phantom-ft")
    assert info.parent == "tiny-phantom" and not info.bundled
    assert seg.selected_model() == str(info.path)
    assert ft.selected_base() == "tiny-phantom-ft"  # the next round starts from it
    cmp = run.done["comparison"]
    text = ft.result_label.value
    assert f"old {cmp['old_dice']:.3f} → new {cmp['new_dice']:.3f}" in text
    assert "tiny-phantom-ft" in text and "parent tiny-phantom" in text
    assert ft.rollback_button.enabled and "tiny-phantom" in ft.rollback_button.text

    # Roll back: one click, the previous model is selected again; the new one stays stored
    ft.rollback_button.clicked.emit()
    assert seg.selected_model() == old_path
    assert (
        "Rolled back" in ft.status_label.value and "Use tiny-phantom-ft" in ft.rollback_button.text
    )
    assert "tiny-phantom-ft" in store.names()
    assert not [n for n in notes if n[0] == "error"]
    assert len([n for n in notes if "registered" in n[1]]) == 1

    # A version that scores worse than its base is not switched to by default: one warning,
    # the selection stays, and the button offers to use it anyway.
    ft.only_if_better.value = True
    worse = {**run.done, "comparison": {**cmp, "old_dice": 0.8, "new_dice": 0.5}}
    notes.clear()
    ft._finish_success(worse)
    assert seg.selected_model() == old_path
    assert [n[0] for n in notes] == ["warning"] and "not selected" in notes[0][1]
    assert "old 0.800 → new 0.500 (-0.300)" in ft.result_label.value
    assert ft.rollback_button.text == "Use tiny-phantom-ft"
    ft.rollback_button.clicked.emit()
    assert seg.selected_model() == str(info.path)
    assert ft.rollback_button.text == "Roll back to tiny-phantom"


def test_cancel_stops_cleanly_and_keeps_best_version(
    make_napari_viewer, qtbot, tiny_model, tmp_path, notes
):
    viewer = make_napari_viewer()
    store, seg, ft = docked(viewer, tiny_model, qtbot)
    ft.add_dataset(export_phantom(tmp_path / "export"))
    ft.epochs_spin.value = 300
    ft.extra_worker_args = [*FAST, "--patience", "300"]
    ft.start()
    qtbot.waitUntil(
        lambda: any(e["event"] == "epoch" for e in ft.run.events), timeout=RUN_TIMEOUT_MS
    )
    ft.cancel_button.clicked.emit()  # SIGTERM + "stop" on stdin
    assert ft.run.cancelled and not ft.cancel_button.enabled
    wait_finished(qtbot, ft)
    done = ft.run.done
    assert done is not None and done["stopped"] == "cancelled", ft.run.stderr[-2000:]
    assert 1 <= done["epochs_run"] < 300 and ft.plot.n_points() == done["epochs_run"]
    info = store.info(done["name"])
    assert info.parent == "tiny-phantom"
    # cancelled: no comparison on held-out slices, so no automatic switch; one click uses it
    assert done["comparison"] is None
    assert seg.selected_model() != str(info.path)
    assert ft.rollback_button.text == f"Use {done['name']}"
    ft.rollback_button.clicked.emit()
    assert seg.selected_model() == str(info.path)
    assert not [n for n in notes if n[0] == "error"]


def test_failures_give_one_notification_and_keep_the_selection(
    make_napari_viewer, qtbot, tiny_model, tmp_path, notes
):
    viewer = make_napari_viewer()
    store, seg, ft = docked(viewer, tiny_model, qtbot)
    before = seg.selected_model()
    # 1. an empty dataset folder: Start is off, and a forced start is refused at once
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a dataset" in ft.add_dataset(empty).problem
    assert not ft.start_button.enabled
    assert "not a dataset" in ft.data_summary.value
    ft.start()
    errors = [n for n in notes if n[0] == "error"]
    assert len(errors) == 1 and "not a dataset" in errors[0][1], notes
    assert ft.run is None and not ft.is_running()
    assert seg.selected_model() == before and user_models(store) == ["tiny-phantom"]
    assert not ft.rollback_button.enabled

    # 2. the process dies (killed, e.g. by the out-of-memory killer) mid-run
    notes.clear()
    for folder in ft.datasets():
        ft.remove_dataset(folder)
    ft.add_dataset(export_phantom(tmp_path / "export"))
    ft.epochs_spin.value = 300
    ft.start()
    qtbot.waitUntil(
        lambda: any(e["event"] == "start" for e in ft.run.events), timeout=RUN_TIMEOUT_MS
    )
    ft._process.kill()
    wait_finished(qtbot, ft)
    errors = [n for n in notes if n[0] == "error"]
    assert len(errors) == 1 and "crashed" in errors[0][1], notes
    assert "previous model is unchanged" in errors[0][1]
    assert seg.selected_model() == before and user_models(store) == ["tiny-phantom"]
    assert len(notes) == 1


def test_dataset_summary_and_helpers(tmp_path):
    export_phantom(tmp_path / "d", seed=1, reviewed=[2, 5, 5, 9])
    image, truth = make_phantom(shape=(12, 64, 64), seed=2)
    export_case(tmp_path / "d", image, truth.data, case_id="all_slices")
    s = summarize_dataset(tmp_path / "d")
    # the reviewed case counts its listed slices, the other its 12 axial slices
    assert (s.layout, s.n_cases, s.n_slices, s.n_reviewed_cases) == ("nnunet_v2", 2, 15, 1)
    reviewed = json.loads((tmp_path / "d" / "reviewed.json").read_text())
    assert reviewed["all_slices"]["reviewed_slices"] is None
    assert summarize_dataset(tmp_path / "nope").problem == "folder does not exist"
    (tmp_path / "flat" / "images").mkdir(parents=True)
    (tmp_path / "flat" / "masks").mkdir()
    assert summarize_dataset(tmp_path / "flat").problem == "no images in images/"
    assert format_seconds(30) == "~30 s" and format_seconds(600) == "~10 min"
    assert format_seconds(3900) == "~1 h 05 min" and format_seconds(None) == ""
