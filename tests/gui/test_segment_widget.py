"""The "Segment lesions" widget in a real napari: run, geometry, cancel, re-run, errors."""

from __future__ import annotations

import gc
import time

import nibabel as nib
import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import QTimer

from napari_covid_seg._widgets.segment import BROWSE, SegmentWidget
from napari_covid_seg.io.phantom import make_phantom
from napari_covid_seg.models.store import ModelStore

from .conftest import dice

RUN_TIMEOUT_MS = 120_000


@pytest.fixture
def notes():
    """Notifications shown during the test: list of (severity, message)."""
    seen: list[tuple[str, str]] = []

    def record(notification):
        seen.append((str(notification.severity), str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def _widget(viewer, tiny_model, **kw) -> SegmentWidget:
    """A docked Segment widget with the test model registered in the (per-test) store."""
    store = ModelStore()
    store.register(tiny_model)
    widget = SegmentWidget(viewer, store=store, **kw)
    viewer.window.add_dock_widget(widget, name="Segment lesions")
    widget.refresh_models(select="tiny-phantom")
    assert widget.selected_model() == str(store.resolve("tiny-phantom"))
    return widget


def _run(qtbot, widget) -> None:
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)


def test_segment_sample_ct(make_napari_viewer, qtbot, tiny_model, tmp_path, notes, record_property):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-covid-seg", "chest_ct")
    image = viewer.layers["sample CT"]
    widget = _widget(viewer, tiny_model)
    assert widget.image_combo.value is image
    assert widget.threshold.value == pytest.approx(0.5)
    from napari_covid_seg.inference.device import describe_device, resolve_device

    assert widget.device_note.value == f"auto → {describe_device(resolve_device('auto'))}"
    widget.want_probability.value = True
    widget.want_uncertainty.value = True
    widget.want_attention.value = True

    # The GUI event loop keeps running while the model works in its thread. (A full
    # garbage collection of the test process's millions of objects pauses every
    # thread for ~0.3 s whoever allocates; start from a clean collector so the
    # measurement reflects the widget, as in a fresh napari session.)
    gc.collect()
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    progress: list[int] = []
    worker = widget.run()
    worker.yielded.connect(lambda step: progress.append(step[0]))
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    timer.stop()
    gaps = np.diff(ticks)
    max_gap_ms = 1000 * float(gaps.max())
    record_property("event_loop_max_gap_ms", round(max_gap_ms, 1))
    print(f"\nGUI event loop during segmentation: {len(ticks)} ticks, max gap {max_gap_ms:.0f} ms")
    assert len(ticks) > 10
    assert max_gap_ms < 500
    assert progress[-1] == 48 and progress == sorted(progress)
    assert widget.progress.value == 48

    labels = viewer.layers["sample CT lesions"]
    assert labels.data.dtype == np.uint8
    assert labels.data.shape == image.data.shape
    np.testing.assert_array_equal(labels.scale, image.scale)
    np.testing.assert_array_equal(labels.translate, image.translate)
    np.testing.assert_array_equal(labels.affine.affine_matrix, image.affine.affine_matrix)
    assert labels.metadata["nifti"]["affine"] == image.metadata["nifti"]["affine"]
    meta = labels.metadata["covid_seg"]
    assert meta["model_version"] == "tiny-phantom"
    assert meta["image_layer"] == "sample CT"
    assert len(meta["slice_uncertainty"]) == 48
    assert max(meta["slice_uncertainty"]) > 0
    assert len(meta["review"]["uncertainty"]) == 48
    np.testing.assert_array_equal(meta["prediction"], labels.data)

    _, truth = make_phantom()
    score = dice(labels.data, truth.data)
    record_property("dice_vs_truth", round(score, 3))
    assert score > 0.5, f"Dice {score:.3f}"
    q = meta["quantification"]
    assert q["n_lesions"] >= 1
    assert q["lesion_ml"] == pytest.approx(labels.data.sum() * 2.5 * 1.4 * 1.4 / 1000)
    assert 0 < q["percent_lungs"] < 100
    assert "mL" in widget.results.value and "of the lungs" in widget.results.value
    lesions = viewer.layers["sample CT lesions"]
    lungs = lesions.metadata["covid_seg"]["lungs"]  # kept for the Correct widget's Lungs tab
    assert lungs.shape == lesions.data.shape and set(np.unique(lungs)) <= {0, 1, 2}

    for name in ("lesion probability", "uncertainty", "attention 1", "attention 2"):
        layer = viewer.layers[f"sample CT {name}"]
        assert layer.data.shape == image.data.shape
        np.testing.assert_array_equal(layer.scale, image.scale)
        np.testing.assert_array_equal(layer.translate, image.translate)
    prob = viewer.layers["sample CT lesion probability"].data
    assert (prob[labels.data > 0] > 127).mean() > 0.95
    assert not [n for n in notes if n[0] == "error"]

    # The plain npe2 writer saves the Labels layer with the image's exact affine.
    out = tmp_path / "lesions.nii.gz"
    viewer.layers.selection = {labels}
    viewer.layers.save(str(out), selected=True, plugin="napari-covid-seg")
    saved = nib.load(str(out))
    # (the in-memory sample's float64 affine is stored as float32 in the file)
    np.testing.assert_allclose(saved.affine, image.metadata["nifti"]["affine"], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(saved.dataobj).transpose(2, 1, 0), labels.data)


def test_cancel_and_rerun_keep_edited_mask(make_napari_viewer, qtbot, tiny_model, notes):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-covid-seg", "chest_ct")
    answers: list[str] = []
    reply = {"value": False}

    def confirm(title, text):
        answers.append(title)
        return reply["value"]

    widget = _widget(viewer, tiny_model, confirm=confirm)
    _run(qtbot, widget)
    assert "mL" in widget.results.value
    labels = viewer.layers["sample CT lesions"]
    prediction = labels.data.copy()
    labels.data[20, 100:110, 100:110] = 1  # a human edit
    edited = labels.data.copy()
    n_layers = len(viewer.layers)

    # Cancel midway: one slice per batch, cancel after the first batch.
    widget.batch_size.value = 1
    worker = widget.run()
    seen: list[int] = []
    worker.yielded.connect(lambda step: seen.append(step[0]))
    qtbot.waitUntil(lambda: bool(seen) and seen[-1] >= 1, timeout=RUN_TIMEOUT_MS)
    assert widget.results.value == ""  # the last run's numbers are not shown as current
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    assert widget.results.value == ""
    assert max(seen) < 48
    assert len(viewer.layers) == n_layers
    np.testing.assert_array_equal(labels.data, edited)
    assert widget.status.value.startswith("Cancelled")
    assert [n for n in notes if "cancelled" in n[1]]
    assert answers == []

    # Re-run: the edited layer is not replaced without asking; "No" keeps it.
    widget.batch_size.value = 0
    _run(qtbot, widget)
    assert answers == ["Replace the edited lesion mask?"]
    np.testing.assert_array_equal(labels.data, edited)
    np.testing.assert_array_equal(viewer.layers["sample CT lesions (new)"].data, prediction)

    # "Yes" replaces the data in place (same layer object, same geometry).
    reply["value"] = True
    _run(qtbot, widget)
    assert len(answers) == 2
    assert viewer.layers["sample CT lesions"] is labels
    np.testing.assert_array_equal(labels.data, prediction)
    assert not [n for n in notes if n[0] == "error"]


def test_errors_are_one_notification_each(
    make_napari_viewer, qtbot, tiny_model, tmp_path, notes, monkeypatch
):
    viewer = make_napari_viewer()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file" * 10)
    widget = _widget(viewer, tiny_model, browse=lambda: str(broken))

    # 1. No image layer.
    assert widget.run() is None
    assert len(notes) == 1 and notes[0][0] == "error" and "No CT image" in notes[0][1]

    # 2. CUDA chosen on a machine without a GPU.
    import torch

    assert not torch.cuda.is_available()
    viewer.open_sample("napari-covid-seg", "chest_ct")
    widget.device_combo.value = "cuda"
    notes.clear()
    assert widget.run() is None
    assert len(notes) == 1 and notes[0][0] == "error" and "CUDA" in notes[0][1]
    widget.device_combo.value = "cpu"

    # 3. A broken model file chosen with "Browse file...".
    widget.model_combo.value = BROWSE  # what choosing the entry does
    assert widget.selected_model() == str(broken)
    notes.clear()
    n_layers = len(viewer.layers)
    _run(qtbot, widget)
    assert len(notes) == 1, notes
    assert notes[0][0] == "error" and "broken.safetensors" in notes[0][1]
    assert len(viewer.layers) == n_layers

    # 4. A 0..255 image (already lung-windowed) is segmented with a clear warning.
    widget.refresh_models(select="tiny-phantom")
    image, _ = make_phantom(shape=(8, 64, 64), seed=1)
    windowed = np.clip((image.data.astype(np.float32) + 1350) * 255 / 1500, 0, 255)
    viewer.add_image(windowed.astype(np.uint8), name="windowed", scale=(2.5, 1.4, 1.4), units="mm")
    widget.image_combo.value = viewer.layers["windowed"]
    notes.clear()
    _run(qtbot, widget)
    warnings = [n for n in notes if n[0] == "warning"]
    assert len(warnings) == 1 and "0..255" in warnings[0][1]
    assert not [n for n in notes if n[0] == "error"]
    assert viewer.layers["windowed lesions"].data.shape == (8, 64, 64)

    # 5. Running out of memory in the engine: one error saying what to do.
    from napari_covid_seg.inference import engine

    def out_of_memory(*args, **kwargs):
        yield engine.Progress(0, 8)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine, "iter_segment", out_of_memory)
    widget.image_combo.value = viewer.layers["sample CT"]
    notes.clear()
    n_layers = len(viewer.layers)
    _run(qtbot, widget)
    assert len(notes) == 1 and notes[0][0] == "error"
    assert "ran out of memory" in notes[0][1] and "batch size" in notes[0][1]
    assert len(viewer.layers) == n_layers


def _dock(viewer, cls):
    return next(w for w in viewer.window.dock_widgets.values() if isinstance(w, cls))


def test_demo_opens_sample_docks_widgets_and_segments(qtbot, tiny_model, tmp_path, monkeypatch):
    import shutil

    from napari_covid_seg import demo
    from napari_covid_seg._widgets.correct import CorrectWidget
    from napari_covid_seg.models import store as store_module

    bundled = tmp_path / "bundled"
    shutil.copytree(tiny_model, bundled / "default")
    monkeypatch.setattr(store_module, "bundled_models_dir", lambda: bundled)
    viewer = demo.main(run_event_loop=False)
    try:
        segment, correct = _dock(viewer, SegmentWidget), _dock(viewer, CorrectWidget)
        assert segment.running
        qtbot.waitUntil(lambda: not segment.running, timeout=RUN_TIMEOUT_MS)
        labels = viewer.layers["sample CT lesions"]
        assert dice(labels.data, viewer.layers["sample CT truth"].data) > 0.5
        assert correct.labels is labels
        assert correct.image is viewer.layers["sample CT"]
    finally:
        viewer.close()
        gc.collect()  # free the viewer's reference cycles before the next test's leak check


def test_demo_without_default_model_says_so(qtbot, tmp_path, monkeypatch, notes):
    from napari_covid_seg import demo
    from napari_covid_seg.models import store as store_module

    monkeypatch.setattr(store_module, "bundled_models_dir", lambda: tmp_path / "none")
    viewer = demo.main(run_event_loop=False)
    try:
        assert "sample CT" in viewer.layers
        assert not _dock(viewer, SegmentWidget).running
        errors = [n for n in notes if n[0] == "error"]
        assert len(errors) == 1 and "default model" in errors[0][1]
    finally:
        viewer.close()
        gc.collect()


def test_noisy_scan_gets_flips_in_auto_mode_and_the_status_says_so(
    make_napari_viewer, qtbot, tiny_model
):
    """Flips: "auto" by default turns test-time flips on for a noisy scan; "off" does not."""
    img, _ = make_phantom(shape=(8, 128, 128), spacing=(5.0, 2.2, 2.2), seed=2)
    rng = np.random.default_rng(0)
    noisy = np.clip(img.data + rng.normal(0.0, 90.0, img.data.shape), -1024, 3071)
    viewer = make_napari_viewer()
    viewer.add_image(noisy.astype(np.int16), name="noisy CT", scale=img.spacing)
    widget = _widget(viewer, tiny_model)
    assert widget.tta.value == "auto"
    _run(qtbot, widget)
    assert "Test-time flips on: noisy scan" in widget.status.value
    flipped = viewer.layers["noisy CT lesions"].data.copy()
    record = viewer.layers["noisy CT lesions"].metadata["covid_seg"]["test_time_flips"]
    assert record["mode"] == "auto" and record["on"] is True  # provenance on the layer
    widget.tta.value = "off"
    widget.confirm = lambda *a, **k: True  # replace the previous result without asking
    _run(qtbot, widget)
    assert "Test-time flips" not in widget.status.value
    assert viewer.layers["noisy CT lesions"].data.shape == flipped.shape
