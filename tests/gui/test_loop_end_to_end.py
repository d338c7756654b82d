"""The whole human-in-the-loop in one napari window, on the phantom sample.

open sample -> segment (Segment widget) -> review and correct slices (Correct
widget) -> export for training (its export panel) -> fine-tune (Fine-tune
widget, real worker subprocess) -> the new version is selected in the Segment
widget -> segment again -> a new Labels layer made by the new version, with the
image's geometry.
"""

from __future__ import annotations

import json

import numpy as np

from napari_covid_seg._widgets._segment_layers import is_edited
from napari_covid_seg._widgets.correct import CorrectWidget
from napari_covid_seg._widgets.finetune import FineTuneWidget
from napari_covid_seg._widgets.segment import SegmentWidget
from napari_covid_seg.models.store import ModelStore

TIMEOUT_MS = 240_000


def test_segment_correct_export_finetune_segment_again(
    make_napari_viewer, qtbot, tiny_model, tmp_path
):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-covid-seg", "chest_ct")
    image, truth = viewer.layers["sample CT"], viewer.layers["sample CT truth"]
    store = ModelStore()
    store.register(tiny_model)
    # "No" to replacing the corrected mask: the second run adds a new layer
    seg = SegmentWidget(viewer, store=store, confirm=lambda title, text: False)
    viewer.window.add_dock_widget(seg, name="Segment lesions")
    seg.refresh_models(select="tiny-phantom")
    seg.device_combo.value = "cpu"

    # 1. segment with the current model
    assert seg.run() is not None
    qtbot.waitUntil(lambda: not seg.running, timeout=TIMEOUT_MS)
    labels = viewer.layers["sample CT lesions"]
    assert labels.metadata["covid_seg"]["model_version"] == "tiny-phantom"
    first = np.array(labels.data)

    # 2. the human reviews the 8 most uncertain slices in the Correct widget and fixes each
    #    to the truth (one undoable edit per slice), marking it reviewed
    correct = CorrectWidget(
        viewer, autosave_root=str(tmp_path / "autosave"), confirm=lambda title, text: False
    )
    viewer.window.add_dock_widget(correct, name="Correct lesions")
    assert correct.labels is labels and correct.image is image
    review = correct.review_panel
    truth_data = np.asarray(truth.data)
    z = review.next()
    reviewed = []
    for _ in range(8):
        assert z is not None

        def fix(mask, z=z):
            out = mask.copy()
            out[z] = truth_data[z]
            return out

        correct.session.apply(fix)
        reviewed.append(z)
        z = review.mark_reviewed()
    assert review.reviewed_slices() == sorted(reviewed)
    corrected = np.array(labels.data)
    assert is_edited(labels)
    np.testing.assert_array_equal(corrected[reviewed], truth_data[reviewed])
    assert not np.array_equal(first[reviewed], truth_data[reviewed])  # there was work to do

    # 3. export for training with the Correct widget's panel (nnU-Net v2 raw + reviewed.json)
    export = tmp_path / "corrected"
    panel = correct.export_panel
    panel.folder.value = str(export)
    panel.case_id.value = "sample_ct"
    panel.export_button.clicked.emit()
    qtbot.waitUntil(lambda: not panel.running, timeout=TIMEOUT_MS)
    assert panel.last_case == "sample_ct"
    meta = json.loads((export / "reviewed.json").read_text())["sample_ct"]
    assert meta["reviewed_slices"] == sorted(reviewed)
    assert meta["provenance"]["model_version"] == "tiny-phantom"

    # 4. fine-tune a few steps (one epoch of 16 resampled slices) in the Fine-tune widget
    ft = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(ft, name="Fine-tune model")
    assert ft.selected_base() == "tiny-phantom"
    summary = ft.add_dataset(export)
    assert (summary.n_cases, summary.n_slices) == (1, len(reviewed))
    ft.epochs_spin.value = 1
    ft.device_combo.value = "cpu"
    ft.only_if_better.value = False
    ft.lr_edit.value = "1e-3"
    ft.extra_worker_args = ["--amp", "off"]
    ft.start()
    qtbot.waitUntil(lambda: ft.run is not None and ft.run.finished, timeout=TIMEOUT_MS)
    assert ft.run.done is not None, ft.run.stderr[-3000:]
    assert ft.plot.n_points() == 1

    # 5. the new version is in the store and selected in the Segment widget
    info = store.info("tiny-phantom-ft")
    assert info.parent == "tiny-phantom"
    assert seg.selected_model() == str(info.path)

    # 6. segment again: a new Labels layer from the new version, same geometry
    assert seg.run() is not None
    qtbot.waitUntil(lambda: not seg.running, timeout=TIMEOUT_MS)
    new = viewer.layers["sample CT lesions (new)"]
    assert new is not labels and new.metadata["covid_seg"]["model_version"] == "tiny-phantom-ft"
    assert new.data.shape == image.data.shape and new.data.dtype == np.uint8
    np.testing.assert_array_equal(new.scale, image.scale)
    np.testing.assert_array_equal(new.translate, image.translate)
    np.testing.assert_array_equal(labels.data, corrected)  # the corrections are kept
    assert not np.array_equal(new.data, first)  # the fine-tuned weights predict differently
