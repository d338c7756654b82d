"""Click to fix in the Correct widget (issue 15): a click on a lesion the mask misses grows the
mask there through a click model, as one undo step; Shift-click says "not lesion"; the clicks
are a Points layer; neighbours; no model -> a clear message and the mode off."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
from qtpy.QtCore import Qt
from scipy import ndimage

from napari_covid_seg._widgets._clicks_panel import NEGATIVE_COLOR, POSITIVE_COLOR
from napari_covid_seg._widgets._layers import geometry_kwargs
from napari_covid_seg._widgets.correct import CorrectWidget
from napari_covid_seg.correction.clicks import disk_map, interior_point
from napari_covid_seg.models.store import ModelStore, bundled_models_dir

from .conftest import TINY_INPUT, _training_slices
from .test_correct_widget import _open_with_mask

#: Click radius of the test click model, in pixels of its 64 px input grid.
RADIUS_PX = 3


@pytest.fixture(scope="session")
def click_home(tiny_model, tmp_path_factory):
    """A napari-covid-seg home whose model store holds a click model.

    The bundled 'click' model when this checkout has one (listed from any
    store); otherwise a click model warm-started from the phantom test model
    (:func:`~napari_covid_seg.models.guidance.add_guidance_channels`) and
    trained for 80 quick steps on phantom slices (other seeds than the sample
    CT) with simulated clicks: a lesion erased from the mask channel and a
    positive click inside it, or a false blob added and a negative click on it.
    About 15 s of CPU time.
    """
    home = tmp_path_factory.mktemp("home")
    if (bundled_models_dir() / "click" / "model.json").is_file():
        return home
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_click_model(tiny_model, home / "models" / "click-phantom")
    finally:
        torch.set_num_threads(threads)
    return home


def _guidance(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(N, 3, S, S)`` simulated clicks and current masks for truth masks ``(N, S, S)``."""
    n, s, _ = truth.shape
    g = np.zeros((n, 3, s, s), np.float32)
    for i, t in enumerate(truth):
        mask = t.copy()
        labels, count = ndimage.label(t)
        u = rng.random()
        if count and u < 0.7:  # a missed lesion and a positive click inside it
            region = labels == rng.integers(1, count + 1)
            mask &= ~region
            g[i, 0] = disk_map((s, s), [interior_point(region)], RADIUS_PX)
        elif u < 0.9:  # a false blob in the mask and a negative click on it
            free = np.argwhere(~ndimage.binary_dilation(t, iterations=4))
            cy, cx = free[rng.integers(len(free))]
            blob = disk_map((s, s), [(cy, cx)], 4) > 0
            mask |= blob & ~t
            g[i, 1] = disk_map((s, s), [(cy, cx)], RADIUS_PX)
        g[i, 2] = mask
    return g


def _train_click_model(tiny_model, folder) -> None:
    import torch

    from napari_covid_seg.models.checkpoint import load_model_version, save_model_version
    from napari_covid_seg.models.guidance import add_guidance_channels, click_preprocessing

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    base = load_model_version(tiny_model)
    model = add_guidance_channels(base.model).train()
    x, y = _training_slices(TINY_INPUT, seeds=(1, 2))
    truth = y[:, 0].numpy() > 0
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(80):
        idx = torch.randint(0, len(x), (8,), generator=gen)
        g = torch.from_numpy(_guidance(truth[idx.numpy()], rng))
        logits = model(torch.cat([x[idx], g], 1))
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * y[idx]).sum() + 1) / (p.sum() + y[idx].sum() + 1)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx])
        opt.zero_grad()
        (bce + dice).backward()
        opt.step()
    for module in model.modules():  # BatchNorm statistics of the final weights
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        for start in range(0, len(x), 8):
            g = torch.from_numpy(_guidance(truth[start : start + 8], rng))
            model(torch.cat([x[start : start + 8], g], 1))
    model.eval()
    save_model_version(
        folder,
        model,
        preprocessing=click_preprocessing(base.preprocessing, radius_px=RADIUS_PX),
        name="click-phantom",
        description="test click model: phantom slices, simulated clicks",
    )


def _dock(viewer, tmp_path) -> CorrectWidget:
    widget = CorrectWidget(viewer, autosave_root=str(tmp_path / "autosave"))
    viewer.window.add_dock_widget(widget, name="Correct lesions")
    return widget


def _largest_lesion_on_a_slice(truth: np.ndarray) -> tuple[int, np.ndarray]:
    """``(z, bool (Y, X) region)``: the largest 2D lesion of any axial slice."""
    best = (0, -1, None)
    for z in range(truth.shape[0]):
        labels, n = ndimage.label(truth[z])
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            k = int(np.argmax(sizes))
            if sizes[k] > best[1]:
                best = (z, int(sizes[k]), labels == k + 1)
    return best[0], best[2]


def _click(panel, viewer, layer, index, modifiers=()) -> None:
    """Press and release without a move, through the mouse callback napari calls."""
    event = SimpleNamespace(
        type="mouse_press",
        button=1,
        modifiers=set(modifiers),
        position=tuple(layer.data_to_world(np.asarray(index, dtype=float))),
    )
    assert panel._on_mouse in viewer.mouse_drag_callbacks
    gen = panel._on_mouse(viewer, event)
    next(gen)
    event.type = "mouse_release"
    with contextlib.suppress(StopIteration):
        next(gen)


def test_a_click_on_a_missed_lesion_grows_the_mask_and_undo_restores_it(
    make_napari_viewer, qtbot, tmp_path, click_home, monkeypatch
):
    monkeypatch.setenv("NAPARI_COVID_SEG_HOME", str(click_home))
    viewer = make_napari_viewer(show=True)
    image, labels = _open_with_mask(viewer)
    truth = viewer.layers["sample CT truth"].data > 0
    widget = _dock(viewer, tmp_path)
    z, region = _largest_lesion_on_a_slice(truth)
    assert region.sum() > 50
    # The user erases that lesion on slice z (one undo step): the mask now misses it.
    widget.session.apply(
        lambda m: np.where(region[None] & (np.arange(m.shape[0]) == z)[:, None, None], 0, m)
    )
    erased = labels.data.copy()
    assert not (erased[z] > 0)[region].any()
    viewer.dims.set_point(0, float(image.data_to_world((z, 0, 0))[0]))

    widget.show_tab("Clicks")
    panel = widget.clicks_panel
    assert panel.model.choices, "no click model offered"
    assert "Shift" in panel.hint.value
    panel.enable.value = True
    qtbot.waitUntil(lambda: panel.ready, timeout=60_000)
    assert labels.mode == "pan_zoom"
    assert viewer.layers.selection.active is labels  # the clicks layer did not take the focus

    r, c = interior_point(region)
    _click(panel, viewer, labels, (z, r, c))
    after = np.asarray(labels.data).copy()
    assert after[z, r, c] > 0, "the clicked missed lesion was not added"
    recovered = (after[z] > 0) & region
    assert recovered.sum() >= 0.5 * region.sum(), (recovered.sum(), region.sum())
    others = [k for k in range(after.shape[0]) if k != z]
    np.testing.assert_array_equal(after[others], erased[others])  # only this slice
    assert len(panel.points.data) == 1
    np.testing.assert_allclose(panel.points.data[0], (z, r, c))
    assert np.allclose(panel.points.face_color[0], _rgba(POSITIVE_COLOR))
    assert "ms per slice" in panel.status.value

    # Ctrl+Z on the canvas (the brushes' undo stack) restores the erased state in one step.
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(labels.data, erased)
    widget.tools_panel.redo()
    np.testing.assert_array_equal(labels.data, after)

    # Shift-click: a negative click, magenta; a drag is a pan, not a click.
    _click(panel, viewer, labels, (z, r, c), modifiers=("Shift",))
    assert len(panel.clicks) == 2 and panel.clicks[-1][3] is False
    assert np.allclose(panel.points.face_color[1], _rgba(NEGATIVE_COLOR))
    # Another slice: the clicks are cleared (unless "keep" is ticked).
    viewer.dims.set_point(0, float(image.data_to_world((z + 2, 0, 0))[0]))
    assert panel.clicks == [] and len(panel.points.data) == 0
    panel.enable.value = False
    assert panel.points is None and "clicks" not in viewer.layers


def _rgba(color: str) -> np.ndarray:
    from napari.utils.colormaps.standardize_color import transform_color

    return transform_color(color)[0]


def test_neighbours_are_one_undo_step_and_clicks_map_through_a_flipped_volume(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    """A stand-in click model (mask + positive disks): the disk lands where clicked on a CT
    stored upside down and mirrored, and the neighbouring slices change in the same step."""
    import torch

    from napari_covid_seg.correction.clicks import ClickSegmenter
    from napari_covid_seg.io import Volume
    from napari_covid_seg.io.phantom import make_phantom
    from napari_covid_seg.models.guidance import click_preprocessing

    class CopyClicks(torch.nn.Module):
        preprocessing = click_preprocessing(
            {"input_size": 256, "n_channels": 3, "threshold": 0.5}, radius_px=6
        )

        def forward(self, x):
            return 40.0 * (x[:, 5:6] + x[:, 3:4] - 2.0 * x[:, 4:5] - 0.5)

    monkeypatch.setenv("NAPARI_COVID_SEG_HOME", str(tmp_path / "home"))
    image, _ = make_phantom(shape=(12, 128, 128), spacing=(2.0, 1.5, 1.5), seed=3)
    affine = image.affine @ np.diag([-1.0, 1.0, -1.0, 1.0])  # i and k reversed
    flipped = Volume(np.ascontiguousarray(image.data[::-1, :, ::-1]), affine)
    viewer = make_napari_viewer()
    layer = viewer.add_image(flipped.data, name="CT", **flipped.layer_kwargs())
    geometry = geometry_kwargs(layer)
    geometry["metadata"]["covid_seg"] = {"role": "lesions", "image_layer": "CT"}
    labels = viewer.add_labels(
        np.zeros(flipped.data.shape, np.uint8), name="CT lesions", **geometry
    )
    widget = _dock(viewer, tmp_path)
    assert widget.labels is labels
    panel = widget.clicks_panel
    # No click model in the store (none bundled either): the mode cannot be turned on,
    # and says why.
    panel.store = ModelStore(root=tmp_path / "home" / "models", bundled_dir=tmp_path / "none")
    panel.model.reset_choices()
    panel._update_state()
    assert not panel.model.choices and not panel.enable.enabled
    assert "No click model" in panel.status.value
    # Give it the stand-in (what loading a chosen model leaves behind).
    panel.model.choices = [("stand-in", "stand-in")]
    panel.segmenter, panel.loaded_spec = ClickSegmenter(CopyClicks()), "stand-in"
    panel._update_state()
    panel.enable.value = True
    assert panel.ready and panel.enable.value
    axial = widget._axial_axis()
    z, y, x = 5, 60, 40
    index = [0, 0, 0]
    index[axial] = z
    index[(axial + 1) % 3], index[(axial + 2) % 3] = y, x
    viewer.dims.set_point(0, float(labels.data_to_world(index)[0]))
    panel.neighbours.value = 2.0  # one slice each side at 2 mm
    steps = len(widget.session.history)
    assert panel.click_at(index) is None  # in a worker
    qtbot.waitUntil(lambda: panel.worker is None, timeout=30_000)
    data = np.asarray(labels.data)
    assert data[tuple(index)] == 1
    touched = np.flatnonzero(np.moveaxis(data, axial, 0).reshape(data.shape[axial], -1).any(1))
    assert touched.tolist() == [z - 1, z, z + 1]
    blob = np.moveaxis(data, axial, 0)[z] > 0
    ys, xs = np.nonzero(blob)
    assert abs(ys.mean() - index[(axial + 1) % 3]) < 1.5
    assert abs(xs.mean() - index[(axial + 2) % 3]) < 1.5
    assert len(widget.session.history) == steps + 1
    widget.session.undo()
    assert not np.asarray(labels.data).any()
