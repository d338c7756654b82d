"""A correction workflow people can live in (issue 14), driven through the real widgets:
save as NIfTI with the source geometry, the lung mask as an editable layer, live numbers,
fill-between on one lesion, tools that say why they did nothing, the mask box following
the layer list, export that updates a case, and docks that fit a 1366 x 768 screen."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import QItemSelectionModel
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_covid_seg._widgets._layers import geometry_kwargs, layer_volume
from napari_covid_seg._widgets.correct import CorrectWidget
from napari_covid_seg.inference.lungs import lung_mask
from napari_covid_seg.inference.quantify import consolidation_threshold, quantify
from napari_covid_seg.io.phantom import make_phantom

from .test_correct_widget import _open_with_mask

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


def _dock(viewer, **kw) -> CorrectWidget:
    widget = CorrectWidget(viewer, **kw)
    viewer.window.add_dock_widget(widget, name="Correct lesions")
    return widget


def _oblique_lps_ct(tmp_path):
    """A phantom CT saved as NIfTI with an oblique, non-RAS, anisotropic affine."""
    image, truth = make_phantom(shape=(16, 96, 112), seed=4)
    affine = np.eye(4)
    rot = Rotation.from_euler("xyz", [11, -6, 21], degrees=True).as_matrix()
    affine[:3, :3] = rot @ np.diag([-0.8, -0.7, 2.5])  # i -> -x (L->R flipped), k = slices
    affine[:3, 3] = [101.5, -33.0, -412.0]
    nifti = nib.Nifti1Image(image.data.transpose(2, 1, 0), affine)
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=4)
    path = tmp_path / "patient_ct.nii.gz"
    nib.save(nifti, str(path))
    return path, affine, truth.data.astype(np.uint8)


def _burden_from_scratch(widget, lesions, lungs):
    image = np.asarray(widget.image.data)
    v = float(np.prod(np.abs(widget.labels.scale))) / 1000.0
    return quantify(lesions, v, lungs, image=image, dense_from=consolidation_threshold("hu"))


def _same(a, b) -> None:
    for key, value in b.to_dict().items():
        assert a.to_dict()[key] == pytest.approx(value, abs=1e-9), key


def test_save_as_nifti_keeps_the_source_geometry_and_never_overwrites_it(
    make_napari_viewer, qtbot, tmp_path, notes
):
    viewer = make_napari_viewer()
    src, affine, mask = _oblique_lps_ct(tmp_path)
    (image,) = viewer.open(str(src), plugin="napari-covid-seg")
    geometry = geometry_kwargs(image)
    geometry["metadata"]["covid_seg"] = {"role": "lesions", "image_layer": image.name}
    labels = viewer.add_labels(mask.copy(), name="patient lesions", **geometry)
    out = tmp_path / "out" / "corrected"
    suggested = []
    widget = _dock(viewer, save_path=lambda s: suggested.append(s) or str(out))
    assert widget.labels is labels and widget.image is image
    widget.show_tab("Save")
    with labels.block_history():  # a correction before saving
        labels.paint((8, 40, 50), 1)
    (tmp_path / "out").mkdir()
    src_bytes = src.read_bytes()
    widget.export_panel.save_button.clicked.emit()
    assert suggested == [str(tmp_path / "patient_ct_lesions.nii.gz")]
    written = tmp_path / "out" / "corrected.nii.gz"  # ".nii.gz" added to a bare name
    saved = nib.load(str(written))
    np.testing.assert_allclose(saved.affine, affine, atol=1e-5)
    assert int(saved.header["sform_code"]) == 4 and int(saved.header["qform_code"]) == 1
    np.testing.assert_array_equal(np.asarray(saved.dataobj).transpose(2, 1, 0), labels.data)
    assert "Saved 'patient lesions'" in widget.export_panel.status.value
    # Never over the CT itself.
    assert widget.save_nifti(str(src)) is None
    assert src.read_bytes() == src_bytes
    assert [n for n in notes if n[0] == "error" and "source" in n[1].lower()], notes
    # napari's own route: File > Save Selected Layers with a .nii.gz name uses our writer.
    from napari.plugins import _npe2

    filters, _ = _npe2.file_extensions_string_for_layers([labels])
    assert "*.nii.gz" in filters
    viewer.layers.selection.active = labels
    route = viewer.layers.save(str(tmp_path / "route.nii.gz"), selected=True)
    assert route == [str(tmp_path / "route.nii.gz")]
    np.testing.assert_allclose(nib.load(route[0]).affine, affine, atol=1e-5)


def test_live_numbers_follow_strokes_undo_and_the_edited_lung_mask(
    make_napari_viewer, qtbot, notes
):
    viewer = make_napari_viewer()
    image, labels = _open_with_mask(viewer)
    lungs = lung_mask(layer_volume(image))
    meta = labels.metadata["covid_seg"]
    meta["lungs"] = lungs
    meta["lung_mask"] = {"status": "ok", "right_ml": 1.0, "left_ml": 1.0, "notes": []}
    widget = _dock(viewer)
    start = widget.quantification()
    _same(start, _burden_from_scratch(widget, labels.data, lungs))
    assert start.percent_right is not None and start.ggo_ml is not None
    text = widget.burden_panel.text.text()
    assert f"{start.lesion_ml:.1f} mL" in text and "of the lungs" in text

    # A brush stroke: a new lesion in the left lung; the numbers follow at once.
    left = np.argwhere(lungs[24] == 2)
    y, x = left[len(left) // 2]
    labels.brush_size = 6
    labels.selected_label = 1
    with labels.block_history():
        labels.paint((24, int(y), int(x)), 1)
    after = widget.quantification()
    _same(after, _burden_from_scratch(widget, labels.data, lungs))
    assert after.lesion_ml > start.lesion_ml and after.left_lesion_ml > start.left_lesion_ml
    assert widget.burden_panel.text.text() != text
    widget.session.undo()
    _same(widget.quantification(), start)

    # The lung mask: shown on request, then corrected with the same tools.
    widget.show_tab("Lungs")
    panel = widget.lungs_panel
    assert "used to restrict" in panel.report.value
    panel.show_button.clicked.emit(True)  # a click: checked
    layer = viewer.layers["sample CT lungs"]
    assert layer.metadata["covid_seg"]["role"] == "lungs" and layer.visible
    np.testing.assert_array_equal(layer.data, lungs)
    assert widget.labels is labels  # showing does not switch the mask being edited
    panel.edit_button.clicked.emit(True)
    assert widget.labels is layer and widget.labels_combo.value is layer
    assert "editing the lung mask" in widget.info.value
    layer.selected_label = 2  # shrink the left lung by 6 mm
    widget.tools_panel.margin.value = 6.0
    assert widget.tools_panel.shrink() > 0
    edited = widget.quantification()
    _same(edited, _burden_from_scratch(widget, labels.data, layer.data))
    assert edited.left_lung_ml < start.left_lung_ml
    assert edited.percent_left > start.percent_left
    panel.edit_button.clicked.emit(False)  # back to lesions
    assert widget.labels is labels
    _same(widget.quantification(), edited)  # still the edited lungs


def test_compute_lung_mask_for_a_mask_opened_from_a_file(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _open_with_mask(viewer)
    widget = _dock(viewer)
    assert widget.quantification().percent_lungs is None
    assert "No lung mask" in widget.burden_panel.text.text()
    widget.show_tab("Lungs")
    # (magicgui's .visible is "on screen"; the viewer is not shown: ask Qt "shown when it is")
    panel = widget.lungs_panel
    assert panel.compute_button.native.isVisibleTo(panel.native)
    worker = widget.compute_lungs()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.lungs_worker is None, timeout=RUN_TIMEOUT_MS)
    layer = viewer.layers["sample CT lungs"]
    assert set(np.unique(layer.data)) == {0, 1, 2}
    q = widget.quantification()
    assert q.percent_right is not None and q.percent_left is not None
    assert "computed from the CT" in widget.lungs_panel.report.value


def test_fill_between_touches_only_the_chosen_lesions_slices(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-covid-seg", "chest_ct")
    model = np.zeros(viewer.layers["sample CT"].data.shape, np.uint8)
    model[:, 60:66, 60:66] = 1  # a "model" lesion with label 1 on every slice...
    model[5:8, 60:66, 60:66] = 0  # ...and an unrelated gap that must stay a gap
    viewer.layers.clear()
    _, labels = _open_with_mask(viewer, model)
    widget = _dock(viewer)
    tools = widget.tools_panel
    before = labels.data.copy()
    labels.brush_size = 10
    labels.selected_label = 1
    # One stroke only: nothing to fill, and the widget says why.
    with labels.block_history():
        labels.paint((20, 150, 170), 1)
    assert tools.fill_between() == 0
    assert "at least two axial slices" in tools.status.text()
    assert tools.edited_label.text() == "edited: 20"
    with labels.block_history():
        labels.paint((28, 156, 180), 1)
    drawn = labels.data.copy()
    assert tools.fill_between() > 0
    changed = np.argwhere(labels.data != drawn)
    assert set(changed[:, 0]) <= set(range(21, 28))  # only between the two drawn slices
    assert changed[:, 1].min() >= 140 and changed[:, 2].min() >= 155  # only that lesion
    np.testing.assert_array_equal(labels.data[:, 55:71, 55:71], before[:, 55:71, 55:71])
    assert not labels.data[5:8, 60:66, 60:66].any()  # the other gap is left alone
    for z in range(21, 28):  # every in-between slice holds the interpolated lesion
        assert labels.data[z, 140:175, 155:200].any()
    assert "between key slices 20, 28" in tools.status.text()
    assert tools.edited_label.text() == ""  # the strokes were used up
    # A chosen range and the lesion selected in the list work too: punch a hole in
    # slice 24 of the interpolated lesion, select it, fill 22..26: the hole is gone.
    labels.data[24, 151:156, 173:178] = 0
    labels.refresh()
    widget.session.sync()
    assert not labels.data[24, 152:155, 174:177].any()
    widget.show_tab("Lesions")
    panel = widget.lesion_panel
    panel.refresh(force=True)
    row = next(i for i, les in enumerate(panel.lesions) if les.bbox[1].start >= 130)
    # (not selectRow: it reads Qt's global keyboard modifiers, which an earlier test's
    # Ctrl+Shift+Z key click may leave set, and then toggles or extends instead of selecting)
    flags = QItemSelectionModel.SelectionFlag.ClearAndSelect
    flags |= QItemSelectionModel.SelectionFlag.Rows
    panel.table.selectionModel().select(panel.table.model().index(row, 0), flags)
    tools.fill_from.setValue(22)
    tools.fill_to.setValue(26)
    kept = labels.data.copy()
    assert tools.fill_between() > 0
    assert labels.data[24, 152:155, 174:177].all()
    changed = np.argwhere(labels.data != kept)
    assert set(changed[:, 0]) <= {23, 24, 25}


def test_tools_say_why_they_changed_nothing(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    _, labels = _open_with_mask(viewer)
    widget = _dock(viewer)
    tools = widget.tools_panel
    before = labels.data.copy()
    tools.margin.value = 1.0  # voxels are 2.5 x 1.4 x 1.4 mm
    assert tools.grow() == 0
    message = "1 mm is less than one 1.4 mm voxel"
    assert message in tools.status.text()
    assert [n for n in notes if message in n[1]]
    assert tools.shrink() == 0 and "nothing to shrink" in tools.status.text()
    assert tools.fill_holes() == 0 and "encloses no hole" in tools.status.text()
    labels.selected_label = 3
    tools.margin.value = 3.0
    assert tools.grow() == 0 and "label 3 has no voxels" in tools.status.text()
    np.testing.assert_array_equal(labels.data, before)
    notes.clear()
    widget.show_tab("Lesions")
    assert widget.lesion_panel.delete_selected() == 0
    assert [n for n in notes if "Select one or more lesions" in n[1]]


def test_mask_box_follows_the_layer_being_edited(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, labels = _open_with_mask(viewer)
    widget = _dock(viewer)
    assert widget.labels is labels
    other = viewer.add_labels(
        np.zeros_like(labels.data), name="my drawing", **geometry_kwargs(image)
    )
    assert widget.labels is labels  # napari selects new layers; that alone does not switch
    with other.block_history():  # ...but painting on it does
        other.paint((10, 100, 100), 1)
    assert widget.labels is other and widget.labels_combo.value is other
    viewer.layers.selection.active = image  # an image: the mask stays
    assert widget.labels is other
    viewer.layers.selection.active = labels  # the user picks a layer in the layer list
    assert widget.labels is labels and widget.labels_combo.current_choice == labels.name
    viewer.layers.selection.active = other
    assert widget.labels is other
    assert widget.tools_panel.session is widget.session  # the tools work on it too


def test_export_again_updates_the_case_or_adds_one_on_request(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    _, labels = _open_with_mask(viewer)
    answers: list[bool] = []
    asked: list[str] = []
    widget = _dock(viewer, confirm=lambda t, q: asked.append(t) or answers.pop(0))
    panel = widget.export_panel
    widget.show_tab("Save")
    folder = tmp_path / "Dataset502_Lesions"
    panel.folder.value = str(folder)

    def export():
        assert panel.export() is not None
        qtbot.waitUntil(lambda: not panel.running, timeout=RUN_TIMEOUT_MS)

    export()
    first = panel.last_case
    label_file = folder / "labelsTr" / f"{first}.nii.gz"
    first_bytes = label_file.read_bytes()
    widget.tools_panel.grow()  # a correction
    answers.append(True)
    export()
    assert asked == ["Update the exported case?"]
    assert panel.last_case == first
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{first}.nii.gz"]
    assert label_file.read_bytes() != first_bytes
    on_disk = np.asarray(nib.load(str(label_file)).dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(on_disk, labels.data)
    entry = json.loads((folder / "reviewed.json").read_text())[first]
    assert entry["provenance"]["updates"] == 1
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 1
    assert "Updated case" in panel.status.value
    panel.new_case.value = True  # a second copy only on request
    export()
    assert panel.last_case == f"{first}_2" and len(asked) == 1


def _fully_visible(widget, window) -> bool:
    """On screen and inside the main window (not clipped by a dock or scrolled away)."""
    if not widget.isVisible() or widget.visibleRegion().isEmpty():
        return False
    top_left = widget.mapTo(window, widget.rect().topLeft())
    bottom_right = widget.mapTo(window, widget.rect().bottomRight())
    inside = window.rect()
    if not (inside.contains(top_left) and inside.contains(bottom_right)):
        return False
    return widget.visibleRegion().boundingRect().height() >= widget.height() - 1


def _cut_off(root, window) -> list[str]:
    """Visible controls and texts of ``root`` that an ancestor (a dock, a scroll area, the
    window) cuts off at the left or right: a dock narrower than what it holds."""
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import (
        QAbstractButton,
        QAbstractSpinBox,
        QComboBox,
        QLabel,
        QLineEdit,
        QProgressBar,
        QWidget,
    )

    kinds = (QAbstractButton, QAbstractSpinBox, QComboBox, QLabel, QLineEdit, QProgressBar)
    out = []
    for w in root.findChildren(QWidget):
        if not isinstance(w, kinds) or not w.isVisible() or isinstance(w.parent(), kinds):
            continue
        left = w.mapTo(window, QPoint(0, 0)).x()
        right = left + w.width()
        parent = w.parentWidget()
        while parent is not None:
            x0 = 0 if parent is window else parent.mapTo(window, QPoint(0, 0)).x()
            if left < x0 - 1 or right > x0 + parent.width() + 1:
                text = w.text() if callable(getattr(w, "text", None)) else ""
                out.append(f"{type(w).__name__} {text[:30]!r} ({left}..{right} px)")
                break
            parent = parent.parentWidget()
    return out


def test_the_three_widgets_fit_a_1366x768_window(make_napari_viewer, qtbot, tmp_path):
    from napari_covid_seg._widgets.finetune import FineTuneWidget
    from napari_covid_seg._widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.showNormal()
    window.resize(1366, 768)
    _open_with_mask(viewer)
    segment = SegmentWidget(viewer)
    correct = CorrectWidget(viewer, autosave_root=str(tmp_path / "autosave"))
    finetune = FineTuneWidget(viewer)
    for widget, name in ((segment, "Segment lesions"), (correct, "Correct lesions")):
        viewer.window.add_dock_widget(widget, name=name)
    viewer.window.add_dock_widget(finetune, name="Fine-tune model")
    qtbot.waitExposed(window)
    qtbot.waitUntil(lambda: window.height() <= 768, timeout=5000)
    qtbot.wait(200)
    assert window.width() <= 1366 and window.height() <= 768
    must_see = {
        "Segment": segment.run_button.native,
        "Cancel segmentation": segment.cancel_button.native,
        "lesion burden": correct.burden_panel,
        "Start fine-tuning": finetune.start_button.native,
        "Roll back": finetune.rollback_button.native,
    }
    for tab, buttons in (
        ("Tools", {"Grow": correct.tools_panel.grow_button}),
        (
            "Save",
            {
                "Save as NIfTI": correct.export_panel.save_button.native,
                "Export": correct.export_panel.export_button.native,
            },
        ),
    ):
        correct.show_tab(tab)
        qtbot.wait(50)
        for name, button in buttons.items():
            area = button.parent()
            while area is not None and not hasattr(area, "ensureWidgetVisible"):
                area = area.parent()
            if area is not None:
                area.ensureWidgetVisible(button)
                qtbot.wait(20)
            assert _fully_visible(button, window), f"{name} is not reachable at 1366x768"
    for name, button in must_see.items():
        assert _fully_visible(button, window), f"{name} is off screen at 1366x768"
    # Nothing is cut off at the right: every dock is as wide as what it holds (the real
    # widths on screen, every tab of the Correct widget in turn).
    for widget in (segment, finetune):
        assert not _cut_off(widget.native, window), _cut_off(widget.native, window)
    for i in range(correct.tabs.count()):
        correct.tabs.setCurrentIndex(i)
        qtbot.wait(30)
        cut = _cut_off(correct.native, window)
        assert not cut, f"tab {correct.tabs.tabText(i)}: {cut}"
    assert window.width() <= 1366
    path = tmp_path / "docks_1366x768.png"
    viewer.screenshot(path=str(path), canvas_only=False)
    assert path.stat().st_size > 0


def test_lesion_count_of_the_panel_matches_a_full_labelling(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, labels = _open_with_mask(viewer)
    widget = _dock(viewer)
    widget.show_tab("Lesions")
    with labels.block_history():
        labels.paint((30, 200, 60), 1)  # a new, separate lesion
    widget.lesion_panel.refresh()
    n = ndimage.label(labels.data > 0, structure=np.ones((3, 3, 3)))[1]
    assert widget.lesion_panel.table.rowCount() == n == widget.quantification().n_lesions


def test_learn_tab_works_on_the_lesion_mask_being_corrected(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, _ = _open_with_mask(viewer)
    widget = _dock(viewer)
    widget.show_tab("Learn")
    learn = widget.learn_panel
    assert learn.session is widget.session and learn.image is image
    assert not learn.button.enabled  # nothing reviewed or corrected yet
    z = widget.review_panel.next()
    widget.review_panel.mark_reviewed()
    assert learn.train_slices() == [z] and learn.button.enabled
    assert "1 reviewed or corrected slice(s)" in learn.summary.value


def test_tool_numbers_have_units_and_limits_declared_once(make_napari_viewer, qtbot):
    from napari_covid_seg._widgets._tools_panel import NUMBERS

    viewer = make_napari_viewer()
    _open_with_mask(viewer)
    tools = _dock(viewer).tools_panel
    for name, spec in NUMBERS.items():
        box = getattr(tools, name)
        assert (box.value, box.min, box.max) == (spec.value, spec.min, spec.max), name
        assert box.native.suffix().strip() == spec.unit, name
    tools.hu_low.value = -700.0
    tools.hu_high.value = -300.0
    tools.hu_limit.setChecked(True)
    assert tools.session.hu_range == (-700.0, -300.0)  # magicgui's changed drives the session
