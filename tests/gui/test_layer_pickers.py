"""Every layer picker of the docks follows the viewer: layers added, renamed, removed."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_seg._widgets._layers import geometry_kwargs
from napari_covid_seg._widgets.correct import CorrectWidget
from napari_covid_seg._widgets.segment import SegmentWidget


def _names(combo) -> list[str]:
    return [layer.name for layer in combo.choices if layer is not None]


@pytest.mark.parametrize("docked", [True, False])
def test_pickers_follow_added_renamed_and_removed_layers(make_napari_viewer, tmp_path, docked):
    viewer = make_napari_viewer()
    segment = SegmentWidget(viewer)
    correct = CorrectWidget(viewer, autosave_root=str(tmp_path / "autosave"))
    if docked:
        viewer.window.add_dock_widget(segment, name="Segment lesions")
        viewer.window.add_dock_widget(correct, name="Correct lesions")
    pickers = {
        "segment CT": segment.image_combo,
        "correct mask": correct.labels_combo,
        "correct CT": correct.image_combo,
    }
    assert all(_names(combo) == [] for combo in pickers.values())

    # Added: CT images go to the CT pickers, 3D Labels layers to the mask picker;
    # plugin outputs (a probability map) and 2D or RGB layers to none.
    ct = viewer.add_image(np.zeros((6, 32, 32), np.int16), name="CT one", scale=(2.5, 1, 1))
    mask = viewer.add_labels(
        np.zeros((6, 32, 32), np.uint8), name="mask one", **geometry_kwargs(ct)
    )
    probability = viewer.add_image(np.zeros((6, 32, 32), np.uint8), name="probability")
    probability.metadata["covid_seg"] = {"role": "probability"}
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="photo", rgb=True)
    ct2 = viewer.add_image(np.zeros((6, 32, 32), np.int16), name="CT two")
    assert _names(pickers["segment CT"]) == ["CT one", "CT two"]
    assert _names(pickers["correct CT"]) == ["CT one", "CT two"]
    assert _names(pickers["correct mask"]) == ["mask one"]
    assert segment.image_combo.value is ct2  # a newly opened CT becomes the one to segment
    assert correct.labels_combo.value is mask and correct.labels is mask
    assert correct.image_combo.value is ct  # the mask's own CT

    # Renamed: the choices show the new names; the chosen layers stay chosen.
    ct.name = "CT renamed"
    mask.name = "mask renamed"
    assert _names(pickers["segment CT"]) == ["CT renamed", "CT two"]
    assert _names(pickers["correct CT"]) == ["CT renamed", "CT two"]
    assert _names(pickers["correct mask"]) == ["mask renamed"]
    assert correct.labels_combo.current_choice == "mask renamed"
    assert correct.image_combo.current_choice == "CT renamed"
    assert segment.image_combo.current_choice == "CT two"

    # Removed: gone from every picker; a picker whose layer went picks another or none.
    viewer.layers.remove(ct2)
    assert _names(pickers["segment CT"]) == ["CT renamed"]
    assert segment.image_combo.value is ct
    viewer.layers.remove(mask)
    assert _names(pickers["correct mask"]) == []
    assert correct.labels is None and correct.labels_combo.value is None
    viewer.layers.remove(ct)
    assert all(_names(combo) == [] for combo in pickers.values())
    assert segment.image_combo.value is None

    # Added again after everything was removed: picked up at once.
    ct3 = viewer.add_image(np.zeros((6, 32, 32), np.int16), name="CT three")
    mask3 = viewer.add_labels(np.zeros((6, 32, 32), np.uint8), name="mask three")
    assert segment.image_combo.value is ct3 and correct.image_combo.value is ct3
    assert correct.labels_combo.value is mask3 and correct.labels is mask3
