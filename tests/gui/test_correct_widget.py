"""The "Correct lesions" widget in a real napari: tools, undo/redo, HU paint, list, queue,
autosave and export."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from qtpy.QtCore import Qt

from napari_covid_seg import correction as C
from napari_covid_seg._widgets._layers import camera, geometry_kwargs
from napari_covid_seg._widgets.correct import CorrectWidget
from napari_covid_seg.correction import ReviewQueue

SPACING = (2.5, 1.4, 1.4)


def _open_with_mask(viewer, mask=None):
    """Sample CT plus a lesion Labels layer as the Segment widget would make it."""
    viewer.open_sample("napari-covid-seg", "chest_ct")
    image = viewer.layers["sample CT"]
    truth = viewer.layers["sample CT truth"].data
    mask = truth.astype(np.uint8).copy() if mask is None else mask
    scores = np.linspace(0.0, 1.0, mask.shape[0])[::-1] ** 2  # slice 0 most uncertain
    geometry = geometry_kwargs(image)
    geometry["metadata"]["covid_seg"] = {
        "role": "lesions",
        "image_layer": image.name,
        "model_version": "tiny-phantom",
        "axial_axis": 0,
        "slice_uncertainty": scores.tolist(),
        "review": ReviewQueue(scores, include=mask.any(axis=(1, 2))).to_dict(),
        "prediction": mask.copy(),
    }
    labels = viewer.add_labels(mask, name="sample CT lesions", **geometry)
    return image, labels


def _widget(viewer, qtbot, **kw) -> CorrectWidget:
    widget = CorrectWidget(viewer, **kw)
    viewer.window.add_dock_widget(widget, name="Correct lesions")
    return widget


def test_tools_follow_the_correction_core_and_undo_redo_exactly(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, labels = _open_with_mask(viewer)
    widget = _widget(viewer, qtbot)
    assert widget.labels is labels and widget.image is viewer.layers["sample CT"]
    tools = widget.tools_panel
    original = labels.data.copy()
    labels.data[10, 5:7, 5:7] = 1  # a 4-voxel island (19.6 mm3)
    labels.data[30, 100:106, 100:106] = 1
    labels.data[30, 102:104, 102:104] = 0  # a 4-voxel hole
    states = [labels.data.copy()]

    def check(button, expected):
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
        np.testing.assert_array_equal(labels.data, expected)
        assert not np.array_equal(expected, states[-1]), "the tool must change something"
        states.append(labels.data.copy())

    tools.island_size.value = 25.0
    check(tools.islands_button, C.remove_small_islands(states[-1], 25.0, SPACING, label=1))
    check(tools.holes_button, C.fill_holes(states[-1], label=1, per_slice=True))
    tools.smooth_method.setCurrentText("closing")
    tools.smooth_radius.value = 3.0
    check(tools.smooth_button, C.smooth(states[-1], 3.0, SPACING, "closing", label=1))
    tools.margin.value = 2.8
    check(tools.grow_button, C.grow(states[-1], 2.8, SPACING, label=1))
    check(tools.shrink_button, C.shrink(states[-1], 2.8, SPACING, label=1))
    # Fill between slices: a new lesion drawn with the brush on slices 4 and 9.
    labels.brush_size = 8
    labels.selected_label = 1
    for z, x in ((4, 200), (9, 210)):
        with labels.block_history():
            labels.paint((z, 60, x), 1)
        states.append(labels.data.copy())  # each stroke is one undo step
    lesion = np.zeros(labels.data.shape, bool)
    lesion[:, 40:80, 180:230] = True  # nothing else lies there
    expected = C.interpolate_lesion(states[-1], [4, 9], lesion, label=1, spacing=SPACING)
    check(tools.interpolate_button, expected)
    assert "between key slices 4, 9" in tools.status.text()

    # Undo walks back through every state exactly, redo forward again.
    for expected in reversed(states[:-1]):
        assert tools.undo()
        np.testing.assert_array_equal(labels.data, expected)
    assert tools.undo()  # the direct edits made before the first tool: one step
    np.testing.assert_array_equal(labels.data, original)
    assert not tools.undo()
    assert not tools.undo_button.isEnabled()
    for expected in states:
        assert tools.redo()
        np.testing.assert_array_equal(labels.data, expected)
    assert not tools.redo()


def test_brush_strokes_undo_and_hu_limited_paint(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, labels = _open_with_mask(viewer)
    widget = _widget(viewer, qtbot)
    session = widget.session
    start = labels.data.copy()

    # A brush stroke across slice 24 (napari groups a drag in block_history, as here).
    labels.brush_size = 10
    labels.selected_label = 1
    with labels.block_history():
        for x in range(60, 200, 4):
            labels.paint((24, 128, x), 1, refresh=False)
    after_stroke = labels.data.copy()
    assert (after_stroke != start).sum() > 500
    # Undo takes back the whole stroke; redo puts it back.
    assert session.undo()
    np.testing.assert_array_equal(labels.data, start)
    assert session.redo()
    np.testing.assert_array_equal(labels.data, after_stroke)
    # An eraser stroke, then a tool: three steps back restore the start exactly.
    with labels.block_history():
        labels.paint((24, 128, 130), 0)
    widget.tools_panel.grow()
    for _ in range(3):
        assert session.undo()
    np.testing.assert_array_equal(labels.data, start)
    assert len(session.history) == 0

    # Paint limited to -900..-100 HU: voxels outside the range are never labelled.
    tools = widget.tools_panel
    tools.hu_limit.setChecked(True)
    assert session.hu_range == (-900.0, -100.0)
    hu = np.asarray(image.data)
    before = labels.data.copy()
    with labels.block_history():
        for x in range(20, 240, 5):  # across air, body wall, ribs and lung
            labels.paint((24, 128, x), 1, refresh=False)
    added = (labels.data != 0) & (before == 0)
    assert added.sum() > 200
    assert hu[added].min() >= -900 and hu[added].max() <= -100
    assert session.reverted_voxels > 500  # the brush did touch air, fat and ribs
    assert session.undo()
    np.testing.assert_array_equal(labels.data, before)
    # Erasing is never limited.
    with labels.block_history():
        labels.paint((24, 128, 128), 0)
    assert labels.data[24, 128, 128] == 0


def test_lesion_list_jumps_and_deletes(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-covid-seg", "chest_ct")
    mask = viewer.layers["sample CT truth"].data.astype(np.uint8)
    viewer.layers.clear()
    mask[38:40, 80:84, 60:64] = 1  # a small extra lesion
    image, labels = _open_with_mask(viewer, mask)
    widget = _widget(viewer, qtbot)
    panel = widget.lesion_panel
    widget.show_tab("Lesions")
    expected = C.list_lesions(labels.data, SPACING, connectivity=3)
    assert panel.table.rowCount() == len(expected) >= 3
    assert panel.table.item(0, 1).text() == f"{expected[0].volume_ml:.2f}"
    # Click the smallest lesion's row: the slider and camera move to it.
    row = len(expected) - 1
    lesion = expected[row]
    rect = panel.table.visualItemRect(panel.table.item(row, 0))
    qtbot.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    z = round((viewer.dims.point[0] - image.translate[0]) / image.scale[0])
    assert lesion.z_range[0] <= z <= lesion.z_range[1]
    assert labels.data[z][lesion.bbox[1:]].any()
    world = labels.data_to_world(lesion.centroid_zyx)
    np.testing.assert_allclose(camera(viewer).center[-2:], world[-2:], atol=1e-3)
    # Delete it; undo brings it back.
    before = labels.data.copy()
    assert panel.selected_rows() == [row]
    assert panel.delete_selected() == lesion.n_voxels
    assert panel.table.rowCount() == len(expected) - 1
    widget.tools_panel.undo()
    np.testing.assert_array_equal(labels.data, before)
    # Keep only the largest.
    panel.refresh()
    panel.table.selectRow(0)
    panel.keep_selected()
    assert C.label_components(labels.data, connectivity=3).n == 1
    assert (labels.data > 0).sum() == expected[0].n_voxels


def test_review_queue_order_and_progress(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, labels = _open_with_mask(viewer)
    widget = _widget(viewer, qtbot)
    review = widget.review_panel
    queued = np.flatnonzero(labels.data.any(axis=(1, 2)))  # slices with lesion
    n = len(queued)
    assert review.progress.value == f"0/{n} reviewed"
    first = review.next()
    assert first == queued[0]  # lowest slice = highest uncertainty here
    assert review.current_slice() == first
    second = review.mark_reviewed()
    assert second == queued[1]
    assert review.current_slice() == second
    review.mark_reviewed()
    assert review.progress.value == f"2/{n} reviewed"
    assert labels.metadata["covid_seg"]["review"]["reviewed"] == [int(queued[0]), int(queued[1])]
    assert review.previous() == queued[1]
    assert review.reviewed_slices() == [int(queued[0]), int(queued[1])]

    # A new segmentation replaces the mask: fresh undo history and review queue.
    widget.tools_panel.grow()
    assert len(widget.session.history) == 1
    new = np.zeros_like(labels.data)
    new[10:14, 100:120, 100:120] = 1
    labels.metadata["covid_seg"]["review"] = ReviewQueue(
        np.ones(new.shape[0]), include=new.any(axis=(1, 2))
    ).to_dict()
    labels.data = new
    assert len(widget.session.history) == 0
    assert review.progress.value == "0/4 reviewed"
    widget.show_tab("Lesions")
    widget.lesion_panel.refresh()
    assert widget.lesion_panel.table.rowCount() == 1


def test_autosave_restores_after_closing_and_reopening(make_napari_viewer, qtbot, tmp_path):
    root = tmp_path / "autosave"
    viewer = make_napari_viewer(show=True)
    _, labels = _open_with_mask(viewer)
    widget = _widget(viewer, qtbot, autosave_root=str(root), autosave_interval_s=60.0)
    qtbot.waitUntil(widget.native.isVisible)
    fp = widget.fingerprint
    widget.tools_panel.grow()  # first edit: saved at once
    first = labels.data.copy()
    saved, _ = widget.autosaves.load(fp)
    np.testing.assert_array_equal(saved, first)
    widget.review_panel.next()
    widget.review_panel.mark_reviewed()
    widget.tools_panel.island_size.value = 1e5
    widget.tools_panel.remove_islands()  # within 60 s: not written yet (throttled)
    edited = labels.data.copy()
    saved, _ = widget.autosaves.load(fp)
    np.testing.assert_array_equal(saved, first)
    viewer.window._qt_window.close()  # closing napari's window saves the pending edit
    np.testing.assert_array_equal(widget.autosaves.load(fp)[0], labels.data)
    viewer.close()

    viewer2 = make_napari_viewer()
    questions = []
    widget2 = CorrectWidget(
        viewer2, autosave_root=str(root), confirm=lambda t, q: questions.append(t) or True
    )
    viewer2.window.add_dock_widget(widget2)
    viewer2.open_sample("napari-covid-seg", "chest_ct")
    assert questions == ["Restore autosaved lesion mask?"]
    restored = viewer2.layers["sample CT lesions"]
    np.testing.assert_array_equal(restored.data, edited)
    image2 = viewer2.layers["sample CT"]
    np.testing.assert_array_equal(restored.scale, image2.scale)
    np.testing.assert_array_equal(restored.translate, image2.translate)
    meta = restored.metadata["covid_seg"]
    assert meta["model_version"] == "tiny-phantom"
    assert len(meta["review"]["reviewed"]) == 1
    assert widget2.labels is restored
    # The mask picker shows the restored layer it edits (it used to stay blank).
    assert widget2.labels_combo.value is restored
    assert widget2.labels_combo.current_choice == restored.name
    assert widget2.image_combo.value is image2
    assert widget2.review_panel.progress.value.startswith("1/")
    np.testing.assert_array_equal(meta["prediction"], viewer2.layers["sample CT truth"].data)
    # Saying "No" on a later reopening deletes the autosave.
    viewer2.close()
    viewer3 = make_napari_viewer()
    widget3 = CorrectWidget(viewer3, autosave_root=str(root), confirm=lambda t, q: False)
    viewer3.open_sample("napari-covid-seg", "chest_ct")
    assert "sample CT lesions" not in viewer3.layers
    assert not widget3.autosaves.exists(fp)


def test_export_for_training(make_napari_viewer, qtbot, tmp_path):
    from napari_covid_seg.training.datasets import load_nnunet_dataset

    viewer = make_napari_viewer()
    image, labels = _open_with_mask(viewer)
    answers = []
    widget = _widget(viewer, qtbot, confirm=lambda title, text: answers.pop(0))
    prediction = labels.data.copy()
    widget.tools_panel.grow()
    with labels.block_history():
        labels.paint((20, 60, 60), 0)
    corrected = labels.data.copy()
    z1 = widget.review_panel.next()
    widget.review_panel.mark_reviewed()
    z2 = widget.review_panel.current_slice()
    widget.review_panel.mark_reviewed()
    panel = widget.export_panel
    folder = tmp_path / "Dataset501_Lesions"
    panel.folder.value = str(folder)
    panel.case_id.value = "phantom_001"
    panel.export_button.clicked.emit()
    qtbot.waitUntil(lambda: not panel.running, timeout=60_000)
    assert panel.last_case == "phantom_001"
    img = nib.load(str(folder / "imagesTr" / "phantom_001_0000.nii.gz"))
    lab = nib.load(str(folder / "labelsTr" / "phantom_001.nii.gz"))
    source_affine = np.asarray(image.metadata["nifti"]["affine"])
    np.testing.assert_allclose(img.affine, source_affine, atol=1e-5)
    np.testing.assert_array_equal(lab.affine, img.affine)
    on_disk = np.asarray(lab.dataobj).transpose(2, 1, 0)
    for z in (z1, z2):  # reviewed slices hold the corrected mask (others: ignore label)
        np.testing.assert_array_equal(on_disk[z], corrected[z])
    reviewed = json.loads((folder / "reviewed.json").read_text())["phantom_001"]
    assert reviewed["reviewed_slices"] == sorted([z1, z2])
    assert reviewed["slice_axis"] == 2  # the NIfTI's own voxel axis (napari axis 0)
    changes = C.counted_changes(prediction, corrected)
    assert reviewed["provenance"]["voxels_added"] == changes["added"] > 0
    assert reviewed["provenance"]["voxels_removed"] == changes["removed"] >= 0
    assert reviewed["provenance"]["model_version"] == "tiny-phantom"
    ds = load_nnunet_dataset(folder, input_size=64)
    assert ds.slice_ids == [f"phantom_001:z={z}" for z in sorted([z1, z2])]
    assert reviewed["provenance"]["burden"]["n_lesions"] == widget.quantification().n_lesions
    # Exporting again asks to update the case; "No" writes nothing.
    before = (folder / "labelsTr" / "phantom_001.nii.gz").read_bytes()
    answers.append(False)
    assert panel.export() is None
    assert "left as it is" in panel.status.value
    assert (folder / "labelsTr" / "phantom_001.nii.gz").read_bytes() == before


def test_keyboard_undo_redo_on_the_canvas(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    _, labels = _open_with_mask(viewer)
    widget = _widget(viewer, qtbot)
    viewer.layers.selection.active = labels
    before = labels.data.copy()
    with labels.block_history():  # a brush stroke
        for x in range(90, 160, 5):
            labels.paint((24, 128, x), 1, refresh=False)
    painted = labels.data.copy()
    assert (painted != before).any()
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(labels.data, before)
    assert widget.session.history.can_redo  # our history did it, not napari's own
    shift_ctrl = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
    qtbot.keyClick(canvas, Qt.Key.Key_Z, shift_ctrl)
    np.testing.assert_array_equal(labels.data, painted)
