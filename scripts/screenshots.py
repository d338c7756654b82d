"""Screenshots of the Segment and Correct widgets in use, for docs/images/.

Run (rerunnable; overwrites the images)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py [--model default]

Uses the synthetic chest CT sample and the bundled default model (or --model
NAME_OR_PATH) in a 1366 x 768 window (a laptop screen). Writes
``segment_widget.png``, ``correct_widget.png`` (live burden and the Tools tab
after a HU-limited stroke), ``correct_lungs.png`` (the lung mask shown and
being corrected), ``correct_save.png`` (Save and export),
``click_to_fix.png`` (Click to fix: one click on a lesion the model missed;
only with a click model: the bundled ``click`` or ``--click-model``) and
``docks_laptop.png`` (Segment, Correct and Fine-tune docked together).
Autosaves go to a temporary folder, so nothing in your user data folder is
touched.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"
WINDOW = (1366, 768)


def wait(app, condition, timeout_s: float = 600.0) -> None:
    """Process Qt events until ``condition()`` or the timeout."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("timed out waiting for the widget")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)


def busiest_slice(mask: np.ndarray) -> int:
    """Axial slice (axis 0) with the most lesion voxels."""
    return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))


def show_slice(viewer, layer, z: int) -> None:
    viewer.dims.set_point(0, float(layer.data_to_world((z, 0, 0))[0]))


def shot(viewer, app, path: Path) -> None:
    """Screenshot of the whole window (widgets included)."""
    wait(app, lambda: True)
    viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model name or path")
    parser.add_argument("--out", type=Path, default=IMAGES, help="output folder")
    parser.add_argument(
        "--click-model",
        default="click",
        help="click model name or path for click_to_fix.png (skipped when there is none)",
    )
    args = parser.parse_args(argv)
    os.environ["NAPARI_COVID_SEG_HOME"] = tempfile.mkdtemp(prefix="covidseg-shots-")

    from napari_covid_seg._widgets._torch_guard import prepare_torch

    prepare_torch()
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_covid_seg.models.store import ModelStore

    model = ModelStore().resolve(args.model)
    try:
        click_model = ModelStore().resolve(args.click_model)
    except Exception as err:  # no bundled click model yet: no Click to fix screenshot
        print(f"no click_to_fix.png: {err}")
        click_model = None
    args.out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-covid-seg")
    viewer.window._qt_window.resize(*WINDOW)
    app = QApplication.instance()
    viewer.open_sample("napari-covid-seg", "chest_ct")
    image = viewer.layers["sample CT"]

    # 1. Segment lesions: run the model, show the mask and the quantification.
    seg_dock, segment = viewer.window.add_plugin_dock_widget("napari-covid-seg", "Segment lesions")
    segment.refresh_models(select=str(model))
    segment.want_uncertainty.value = True
    segment.run()
    wait(app, lambda: not segment.running)
    labels = viewer.layers["sample CT lesions"]
    z = busiest_slice(np.asarray(labels.data))
    show_slice(viewer, image, z)
    viewer.reset_view()
    viewer.layers.selection.active = labels
    wait(app, lambda: True)
    path = args.out / "segment_widget.png"
    viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    print(f"wrote {path}")

    # 2. Correct lesions: live burden, review queue, HU-limited brush stroke (Tools tab).
    seg_dock.hide()
    _, correct = viewer.window.add_plugin_dock_widget("napari-covid-seg", "Correct lesions")
    wait(app, lambda: correct.labels is labels)
    correct.review_panel.next()
    correct.review_panel.mark_reviewed()
    correct.review_panel.mark_reviewed()
    correct.show_tab("Lesions")
    correct.lesion_panel.refresh()
    correct.lesion_panel.table.selectRow(0)
    correct.lesion_panel.jump_to_row(0)
    # Threshold paint: a brush stroke along the lower border of the largest lesion
    # labels the ground-glass rim the model missed (-700..-300 HU) but none of
    # the aerated lung (about -860 HU) the brush also covers.
    tools = correct.tools_panel
    tools.hu_low.value = -700.0
    tools.hu_high.value = -300.0
    tools.hu_limit.setChecked(True)
    labels.mode = "paint"
    labels.brush_size = 8
    lesion = correct.lesion_panel.lesions[0]
    z = round(lesion.centroid_zyx[0])
    plane = np.asarray(labels.data[z]) > 0
    with labels.block_history():
        for x in range(lesion.bbox[2].start, lesion.bbox[2].stop, 2):
            rows = np.flatnonzero(plane[:, x])
            if rows.size:
                labels.paint((z, int(rows.max()) + 3, x), 1, refresh=False)
    labels.refresh()
    viewer.scene.camera.zoom *= 1.6
    tools.margin.value = 1.0
    tools.grow()  # 1 mm < one 1.4 mm voxel: the panel says why nothing changed
    correct.show_tab("Tools")
    viewer.layers.selection.active = labels
    shot(viewer, app, args.out / "correct_widget.png")

    # 3. The lung mask: shown, and being corrected with the same tools.
    correct.show_tab("Lungs")
    correct.show_lungs(True)
    correct.edit_lungs(True)
    viewer.reset_view()
    shot(viewer, app, args.out / "correct_lungs.png")
    correct.edit_lungs(False)

    # 4. Save and export (a real save into a temporary folder, for the status line).
    correct.show_tab("Save")
    saved = Path(os.environ["NAPARI_COVID_SEG_HOME"]) / "sample_ct_lesions.nii.gz"
    correct.save_nifti(str(saved))
    correct.export_panel.folder.value = str(Path.home() / "covid" / "Dataset501_Lesions")
    shot(viewer, app, args.out / "correct_save.png")

    # 5. Click to fix: one click on the largest lesion the model missed on its slice.
    if click_model is not None:
        click_to_fix(viewer, app, correct, image, labels, click_model, args.out)

    # 6. All three widgets docked together on a laptop screen.
    seg_dock.show()
    viewer.window.add_plugin_dock_widget("napari-covid-seg", "Fine-tune model")
    correct.show_tab("Tools")
    shot(viewer, app, args.out / "docks_laptop.png")
    viewer.close()


def largest_miss(mask: np.ndarray, truth: np.ndarray) -> tuple[int, tuple[int, int], int]:
    """``(z, (y, x), voxels)``: the interior point of the largest missed 2D lesion region."""
    from scipy import ndimage

    from napari_covid_seg.correction.clicks import interior_point

    best = (0, (0, 0), 0)
    for z in range(mask.shape[0]):
        missed = (truth[z] > 0) & ~(mask[z] > 0)
        if not missed.any():
            continue
        comps, _ = ndimage.label(missed)
        sizes = np.bincount(comps.ravel())[1:]
        k = int(np.argmax(sizes))
        if sizes[k] > best[2]:
            best = (z, interior_point(comps == k + 1), int(sizes[k]))
    return best


def click_to_fix(viewer, app, correct, image, labels, model, out: Path) -> None:
    """One positive click on the largest missed lesion; the screenshot shows the result."""
    truth = np.asarray(viewer.layers["sample CT truth"].data)
    z, (y, x), size = largest_miss(np.asarray(labels.data), truth)
    print(f"largest missed region: slice {z}, {size} px at ({y}, {x})")
    correct.show_tab("Clicks")
    panel = correct.clicks_panel
    panel.model.reset_choices()
    if str(model) in panel.model.choices:
        panel.model.value = str(model)
    else:
        panel.add_model(str(model))
    panel.enable.value = True
    wait(app, lambda: panel.ready or not panel.enable.value)
    show_slice(viewer, image, z)
    viewer.reset_view()
    viewer.scene.camera.center = tuple(labels.data_to_world((z, y, x))[1:])
    viewer.scene.camera.zoom *= 2.0
    lungs = correct.lungs_layer()
    if lungs is not None:
        lungs.visible = False  # the lesions and the click, nothing else
    viewer.layers.selection.active = labels
    before = int((np.asarray(labels.data[z]) > 0).sum())
    panel.click_at((z, y, x))
    after = int((np.asarray(labels.data[z]) > 0).sum())
    values = np.unique(np.asarray(labels.data[z]))
    print(f"slice {z}: {before} -> {after} lesion px (labels {values}); {panel.status.value}")
    shot(viewer, app, out / "click_to_fix.png")
    panel.enable.value = False
    if lungs is not None:
        lungs.visible = True


if __name__ == "__main__":
    main()
