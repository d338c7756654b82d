"""Screenshots of the Fine-tune widget after a real run (rerunnable; needs a display).

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots_finetune.py

Opens the sample CT, segments it with the base model (default: the bundled
``default``) in the Segment widget, exports the sample's truth as the
"corrected" mask for its lesion slices, fine-tunes a few epochs in the
Fine-tune widget (a real worker subprocess) and saves
``docs/images/finetune_widget.png``. The model store is a temporary folder, so
the user's store is not touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def _settle(seconds: float = 1.0) -> None:
    t0 = time.perf_counter()
    _wait(lambda: time.perf_counter() - t0 > seconds, seconds + 5)


def finetune_widget_screenshot(
    out: str | os.PathLike = REPO / "docs" / "images" / "finetune_widget.png",
    *,
    base: str = "default",
    epochs: int = 6,
    lr: float | None = None,
    device: str = "cpu",
    size: tuple[int, int] = (1500, 1000),
) -> Path:
    """Run segment -> export -> fine-tune in a real napari window and screenshot it."""
    home = Path(tempfile.mkdtemp(prefix="covidseg_shot_"))
    os.environ["NAPARI_COVID_SEG_HOME"] = str(home)  # inherited by the worker process
    import napari
    import numpy as np

    from napari_covid_seg._widgets._layers import layer_volume
    from napari_covid_seg.io.dataset_export import export_case
    from napari_covid_seg.models.store import ModelStore

    store = ModelStore()
    if base != "default" or not (store.bundled_dir / "default" / "model.json").is_file():
        base = store.register(store.resolve(base)).name
    # torch/torchvision before the canvas: triton's LLVM crashes next to Mesa's llvmpipe
    # (see _widgets/_torch_guard.py). The Segment widget guards this itself too.
    from napari_covid_seg._widgets._torch_guard import prepare_torch

    prepare_torch()

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(*size)
    viewer.open_sample("napari-covid-seg", "chest_ct")
    image, truth = viewer.layers["sample CT"], viewer.layers["sample CT truth"]
    _, seg = viewer.window.add_plugin_dock_widget("napari-covid-seg", "Segment lesions")
    seg.refresh_models(select=base)
    seg.device_combo.value = device
    seg.run()
    _wait(lambda: not seg.running, 900)
    truth.visible = False

    # The human's correction: the sample's truth on the slices with lesion, exported.
    data = home / "export"
    lesion_slices = [int(z) for z in np.flatnonzero(np.asarray(truth.data).any(axis=(1, 2)))]
    export_case(
        data,
        layer_volume(image),
        np.asarray(truth.data),
        case_id="sample_ct",
        reviewed_slices=lesion_slices,
        provenance={"model_version": base, "note": "screenshot script"},
    )
    _, ft = viewer.window.add_plugin_dock_widget("napari-covid-seg", "Fine-tune model", tabify=True)
    ft.refresh_models(select=base)
    ft.add_dataset(data)
    ft.epochs_spin.value = epochs
    ft.device_combo.value = device
    if lr is not None:
        ft.extra_worker_args = ["--lr", str(lr)]
    ft.start()
    _wait(lambda: ft.run is not None and ft.run.finished, 1800)
    if ft.run.done is None:
        raise RuntimeError(f"fine-tuning failed: {ft.run.error} {ft.run.stderr[-2000:]}")
    ft.native.parentWidget().raise_()
    layers = [la for la in viewer.layers if la.name.endswith("lesions")]
    if layers:
        viewer.layers.selection.active = layers[0]
    z = lesion_slices[len(lesion_slices) // 2]
    viewer.dims.set_point(0, image.translate[0] + z * image.scale[0])
    _settle(1.5)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(out), canvas_only=False)
    viewer.close()
    shutil.rmtree(home, ignore_errors=True)  # the temporary store, export and run folders
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "docs" / "images" / "finetune_widget.png"))
    p.add_argument("--base", default="default", help="model name or folder")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    path = finetune_widget_screenshot(
        args.out, base=args.base, epochs=args.epochs, lr=args.lr, device=args.device
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
