"""Screenshot of "Learn from my corrections" after a real run (rerunnable; needs a display).

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_learn.py

Opens the sample CT, segments it with the bundled model, "corrects" five
slices spread over the volume to the sample's truth (as a user scrolling
through would), docks the Correct widget on its Learn tab (where users find
it), runs it (fine-tune on the five slices, re-segment the rest) and saves
``docs/images/learn_in_volume.png``. Autosaves go to a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _wait(condition, timeout_s: float) -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    t0 = time.perf_counter()
    while not condition():
        app.processEvents()
        time.sleep(0.03)
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "docs" / "images" / "learn_in_volume.png"))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    from napari_covid_seg._widgets._torch_guard import prepare_torch

    prepare_torch()
    import napari
    import numpy as np
    import torch

    from napari_covid_seg._widgets._layers import geometry_kwargs, layer_volume, plugin_meta
    from napari_covid_seg._widgets.correct import CorrectWidget
    from napari_covid_seg.inference import segment

    if args.threads:
        torch.set_num_threads(args.threads)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    viewer.open_sample("napari-covid-seg", "chest_ct")
    image, truth = viewer.layers["sample CT"], viewer.layers["sample CT truth"]
    truth.visible = False
    vol = layer_volume(image)
    base = segment(vol, "default", device="cpu", uncertainty=False)
    axis = base.axial_axis
    n = base.mask.shape[axis]
    picks = [round(float(z)) for z in np.linspace(0, n - 1, 7)[1:-1]]
    prediction = base.mask.copy()
    lesions = viewer.add_labels(
        prediction.copy(), name="lesions (corrected on 5 slices)", **geometry_kwargs(image)
    )
    plugin_meta(lesions).update({"prediction": prediction, "model_version": "default"})
    widget = CorrectWidget(viewer, autosave_root=tempfile.mkdtemp(prefix="covid-seg-shot-"))
    viewer.window.add_dock_widget(widget, name="Correct lesions", area="right")
    widget.labels_combo.value = lesions
    _wait(lambda: widget.session is not None, 30)
    session = widget.session
    t = np.asarray(truth.data)

    def correct(mask: np.ndarray) -> np.ndarray:
        out = np.moveaxis(mask.copy(), axis, 0)
        out[picks] = np.moveaxis(t, axis, 0)[picks]
        return np.moveaxis(out, 0, axis)

    session.apply(correct)
    widget.show_tab("Learn")
    panel = widget.learn_panel
    panel.device = "cpu"
    panel.refresh()
    panel.start()
    _wait(lambda: panel.worker is None, 900)
    if panel.result is None:
        print(f"no result: {panel.status.value}", file=sys.stderr)
        return 1
    viewer.dims.set_current_step(axis, n // 2 + 3)
    viewer.reset_view()
    t_end = time.perf_counter() + 1.5  # let Qt lay the final status text out before the shot
    _wait(lambda: time.perf_counter() > t_end, 5)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(out), canvas_only=False, flash=False)
    print(f"wrote {out}; {panel.status.value}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
