"""'Learn from my corrections' panel: one undoable step, protected slices kept, Cancel."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_seg._reader import volume_to_layer_data
from napari_covid_seg._widgets._edit_session import EditSession
from napari_covid_seg._widgets._layers import geometry_kwargs
from napari_covid_seg._widgets._learn_panel import LearnPanel
from napari_covid_seg.io.phantom import make_phantom


def _setup(make_napari_viewer, tiny_model):

    viewer = make_napari_viewer()
    image, truth = make_phantom(shape=(8, 64, 64), spacing=(2.5, 5.0, 5.0), seed=0)
    axis = image.reorientation.axial_axis
    data, kwargs, _ = volume_to_layer_data(image, name="ct")
    img_layer = viewer.add_image(data, **kwargs)
    pred = np.zeros_like(truth.data)
    lab_layer = viewer.add_labels(pred.copy(), name="lesions", **geometry_kwargs(img_layer))
    session = EditSession(lab_layer, np.asarray(image.data))
    panel = LearnPanel()
    panel.device = "cpu"
    panel.segment_options = {"restrict_to_lungs": False, "precision": "fp32"}
    panel.epochs.value = 1
    panel.set_context(
        session,
        img_layer,
        axis,
        reviewed=lambda: [5],
        prediction=lambda: pred,
        model=lambda: str(tiny_model),
    )
    return viewer, session, panel, truth, axis


def test_learn_applies_one_undo_step_and_keeps_protected_slices(
    make_napari_viewer, qtbot, tiny_model
):
    _, session, panel, truth, axis = _setup(make_napari_viewer, tiny_model)
    assert not panel.button.enabled or panel.train_slices() == [5]
    # the user corrects slice 2 to the truth (an edit away from the prediction)
    session.apply(
        lambda m: np.where(
            np.arange(m.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)]) == 2,
            truth.data,
            m,
        )
    )
    assert panel.train_slices() == [2, 5]
    panel.refresh()
    assert panel.button.enabled and "2 reviewed or corrected" in panel.summary.value
    before = np.array(session.data, copy=True)
    worker = panel.start()
    assert worker is not None and panel.cancel_button.enabled
    qtbot.waitUntil(lambda: panel.worker is None, timeout=240_000)
    assert panel.result is not None, panel.status.value
    after = np.asarray(session.data)
    for z in (2, 5):
        assert np.array_equal(np.take(after, z, axis), np.take(before, z, axis))
    assert "Ctrl+Z" in panel.status.value
    # the re-segmented slices are the new baseline: still 2 slices to learn from
    assert panel.train_slices() == [2, 5]
    # one undo step restores the mask as it was
    if not np.array_equal(after, before):
        assert session.undo()
        assert np.array_equal(np.asarray(session.data), before)


def test_cancel_leaves_the_mask(make_napari_viewer, qtbot, tiny_model):
    session, panel = _setup(make_napari_viewer, tiny_model)[1:3]
    before = np.array(session.data, copy=True)
    panel.epochs.value = 50
    panel.start()
    panel.cancel()
    qtbot.waitUntil(lambda: panel.worker is None, timeout=240_000)
    assert panel.result is None and "unchanged" in panel.status.value
    assert np.array_equal(np.asarray(session.data), before)


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
