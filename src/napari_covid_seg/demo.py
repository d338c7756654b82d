"""``python -m napari_covid_seg.demo``: the whole plugin in one window, in one command.

Opens napari with the synthetic chest CT sample, docks "Segment lesions" and
"Correct lesions", and starts segmenting with the bundled default model.
When the mask appears, correct it (lesion list, review queue, tools, brush
with Ctrl+Z / Ctrl+Shift+Z) and export it for training.
"""

from __future__ import annotations

from typing import Any

PLUGIN = "napari-covid-seg"


def main(run_event_loop: bool = True) -> Any:
    """Open the demo viewer; returns it (``run_event_loop=False`` for tests and scripts).

    Segmentation runs in the background; with ``run_event_loop=False`` the
    caller waits for ``viewer.window._dock_widgets`` / the Segment widget's
    ``running`` flag itself.
    """
    from ._widgets._torch_guard import freeze_startup_objects, prepare_torch

    prepare_torch()  # before napari's OpenGL context exists (see _torch_guard)
    import napari
    import napari.viewer

    freeze_startup_objects()  # short GC pauses from here on (see _torch_guard)
    from ._widgets._notify import notify_error
    from .errors import ModelLoadError
    from .models.store import ModelStore

    viewer = napari.Viewer(title="napari-covid-seg demo")
    viewer.open_sample(PLUGIN, "chest_ct")
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment lesions")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Correct lesions", tabify=False)
    try:
        default = ModelStore().resolve("default")
    except ModelLoadError as err:
        notify_error(
            f"The demo needs the bundled default model: {err}. The sample is open; choose a "
            "model in 'Segment lesions' ('Browse file...') and press Segment."
        )
    else:
        segment.refresh_models(select=str(default))
        segment.run()
    if run_event_loop:
        napari.run()
    return viewer


if __name__ == "__main__":
    main()
