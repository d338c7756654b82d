"""Click to fix in the Correct widget: a click model re-predicts the slice under the clicks.

With the mode on, a click on the image (pan/zoom mode, no drag) says "this is
lesion"; Shift-click, or any click while "Clicks say: not lesion" is ticked,
says "this is not" (napari already uses Alt for zoom boxes and brush size).
The clicks are a Points layer (green = lesion, magenta = not lesion) on the
CT's geometry. Each click re-predicts the current axial slice from all the
clicks on it with :class:`~..correction.clicks.ClickSegmenter` and replaces
the slice as ONE undoable edit of the widget's
:class:`~._edit_session.EditSession` (Ctrl+Z restores it, as for brushes).
"Also neighbours within N mm" re-predicts the adjacent slices with the same
clicks in the same step, in a napari ``thread_worker``.

The engine works on canonical slices (rows anterior -> posterior, columns
patient right -> left; :func:`~..inference.preprocess.slice_reorientation`):
a click's data index ``(z, y, x)`` of the layer is mapped there, and the new
slice is written back through a canonical view of the layer's array, so the
mask lands on the source voxels whatever the file's orientation.

The click model loads once, lazily, when the mode is first turned on (in a
worker); without one the mode stays off and says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton

from ._layers import KEY, LUNGS, geometry_kwargs, layer_volume, plugin_meta, role, wrap_labels
from ._notify import describe_error, notify_error

#: Colours of positive ("lesion here") and negative ("not lesion") clicks.
POSITIVE_COLOR = "#33dd55"
NEGATIVE_COLOR = "#ff33ff"
#: The modifier that makes a click negative (napari uses Alt for zoom boxes and brush size).
NEGATIVE_MODIFIER = "Shift"
#: Role of the clicks' Points layer.
CLICKS = "clicks"
NO_MODEL = (
    "No click model is installed. The bundled 'click' model comes with a later release; "
    "train one with training/recipes/train_click_model.py and add it to the model store."
)


def click_models(store: Any = None) -> list[tuple[str, str]]:
    """``(label, path)`` of the store's model versions that take clicks (guidance channels)."""
    from ..models.guidance import guidance_spec
    from ..models.metadata import read_model_json
    from ..models.store import ModelStore

    store = store if store is not None else ModelStore()
    out = []
    for info in store.list():
        if info.error:
            continue
        try:
            meta = read_model_json(info.path)
            if guidance_spec(meta.get("preprocessing")) is None:
                continue
        except Exception:  # an unreadable or unsupported model.json: not offered
            continue
        out.append((info.name + ("" if not info.bundled else " (bundled)"), str(info.path)))
    return out


def canonical_index(index: Sequence[float], r: Any, shape: Sequence[int]) -> tuple[int, int, int]:
    """A source data index ``(z, y, x)`` -> canonical ``(slice, row, col)`` of ``to_canonical``."""
    out = []
    for n in range(3):
        axis = r.axes[n]
        v = round(float(index[axis]))
        out.append(int(shape[axis]) - 1 - v if r.flips[n] else v)
    return out[0], out[1], out[2]


def _load(spec: str) -> Any:
    """Worker body: the ClickSegmenter, or the error (never raises)."""
    try:
        from ..correction.clicks import ClickSegmenter

        return ClickSegmenter(spec)
    except Exception as err:
        return err


def _predict_slices(segmenter: Any, jobs: list[dict]) -> Any:
    """Worker body: ``[(canonical slice, bool mask)]`` and seconds, or the error."""
    try:
        t0 = time.perf_counter()
        out = [(job["slice"], segmenter.fix_slice(*job["args"], **job["kw"])) for job in jobs]
        return out, time.perf_counter() - t0
    except Exception as err:
        return err


class ClicksPanel(Container):
    """The "Clicks" tab: mode toggle, model, negative switch, neighbours, keep, clear, status.

    The Correct widget calls :meth:`set_context` whenever the mask it edits
    changes; ``add_layer(make)`` adds a layer without the mask picker jumping to it.
    :meth:`click_at` is what a click on the canvas calls (with the layer's data
    index); tests call it directly.
    """

    def __init__(
        self,
        viewer: Any,
        *,
        add_layer: Callable[[Callable[[], Any]], Any] | None = None,
        store: Any = None,
    ) -> None:
        super().__init__(labels=False)
        self.viewer = viewer
        self.add_layer = add_layer or (lambda make: make())
        self.store = store
        #: ``(label, path)`` click models offered beside the store's (:meth:`add_model`)
        self.extra_models: list[tuple[str, str]] = []
        self.session: Any = None
        self.image: Any = None
        self.axial_axis = 0
        self.roi_box: Any = None
        self.standardize: dict | None = None
        self.tta: bool | None = None  # test-time flips as segment ran the volume
        self.segmenter: Any = None
        self.loaded_spec: str | None = None
        self.loader: Any = None
        self.worker: Any = None
        #: clicks as (data index z, y, x of the mask layer, positive)
        self.clicks: list[tuple[float, float, float, bool]] = []
        self.points: Any = None
        self.last_ms: float | None = None
        self._clicked_slice: int | None = None
        self._geometry: tuple[Any, Any, Any] | None = None  # (image, Volume, reorientation)
        self._old_mode: str | None = None
        self._loading_spec: str | None = None
        self._pending: tuple[Any, Any, int] | None = None

        self.enable = CheckBox(name="enable", text="Click to fix", value=False)
        self.enable.tooltip = (
            "Click on a missed lesion to add it, Shift-click on a false one to remove it: "
            "the slice is re-predicted from your clicks (one undo step per click)"
        )
        self.model = ComboBox(name="click_model", label="Model", choices=self._model_choices)
        self.model.tooltip = "Models that take clicks (guidance channels) from the model store"
        self.negative = CheckBox(
            name="negative", text="Clicks say: not lesion (or Shift-click)", value=False
        )
        self.neighbours = FloatSpinBox(
            name="neighbours_mm",
            label="Also slices within",
            value=0.0,
            min=0.0,
            max=30.0,
            step=2.5,
        )
        self.neighbours.native.setPrefix("also slices within ")
        self.neighbours.native.setSuffix(" mm")
        self.neighbours.native.setSpecialValueText("this slice only")
        self.neighbours.tooltip = (
            "Re-predict the neighbouring axial slices within this distance with the same clicks"
        )
        self.keep = CheckBox(name="keep", text="Keep clicks when the slice changes", value=False)
        self.clear_button = PushButton(name="clear", text="Clear clicks")
        self.hint = Label(
            name="hint",
            value="Click = lesion here (green) · Shift-click = not lesion (magenta) · "
            "drag pans · works in pan/zoom mode.",
        )
        self.status = Label(name="status", value="")
        wrap_labels(self.hint, self.status)
        for w in (self.negative.native, self.keep.native):
            w.setMinimumWidth(40)
        model_row = Container(name="model_row", widgets=[self.model], labels=True)
        model_row.margins = (0, 0, 0, 0)
        self.extend(
            [
                self.enable,
                model_row,
                self.negative,
                self.neighbours,
                self.keep,
                self.clear_button,
                self.hint,
                self.status,
            ]
        )
        self.native.layout().addStretch(1)  # rows at the top, not spread over the page
        self.enable.changed.connect(self._on_enable)
        self.model.changed.connect(lambda *_: self._on_model_changed())
        self.clear_button.changed.connect(lambda *_: self.clear())
        viewer.dims.events.current_step.connect(self._on_step)
        self._update_state()

    # -- context -----------------------------------------------------------------------------
    def _model_choices(self, *_: Any) -> list[tuple[str, str]]:
        try:
            found = click_models(self.store)
        except Exception:
            found = []
        known = {path for _, path in found}
        return found + [(name, path) for name, path in self.extra_models if path not in known]

    def add_model(self, path: str, name: str | None = None) -> None:
        """Offer a click model folder outside the store, and choose it."""
        from pathlib import Path

        self.extra_models.append((name or Path(path).name, str(path)))
        self.model.reset_choices()
        self.model.value = str(path)
        self._update_state()

    def set_context(self, session: Any, image: Any, axial_axis: int = 0) -> None:
        """The mask being edited (its EditSession), its CT layer and axial axis."""
        if session is not self.session or image is not self.image:
            self.clear()
        self.session = session
        self.image = image
        self.axial_axis = int(axial_axis)
        self._geometry = None
        self.roi_box = None
        self.standardize = None
        self.tta = None
        if session is not None:
            flips = plugin_meta(session.layer).get("test_time_flips")
            if isinstance(flips, dict) and "on" in flips:
                self.tta = bool(flips["on"])  # as segment ran the volume
            report = plugin_meta(session.layer).get("lung_mask")
            roi = report.get("roi") if isinstance(report, dict) else None
            if isinstance(roi, dict) and roi.get("box") is not None:
                self.roi_box = tuple(int(v) for v in roi["box"])
            if isinstance(report, dict) and isinstance(report.get("standardize"), dict):
                self.standardize = dict(report["standardize"])  # the volume's intensity map
        if self.enable.value and not self._usable():
            self.enable.value = False
        self._update_state()

    def _usable(self) -> bool:
        return (
            self.session is not None
            and self.image is not None
            and role(self.session.layer) != LUNGS
            and self.session.layer.ndim == 3
        )

    def _update_state(self, message: str | None = None) -> None:
        has_models = bool(self.model.choices)
        self.enable.enabled = has_models and self._usable()
        for w in (self.negative, self.neighbours, self.keep, self.clear_button):
            w.enabled = self.enable.value
        if message is not None:
            self.status.value = message
        elif not has_models:
            self.status.value = NO_MODEL
        elif self.session is None or self.image is None:
            self.status.value = "Choose a lesion mask and its CT first."
        elif role(self.session.layer) == LUNGS:
            self.status.value = "Click to fix works on the lesion mask (go back to lesions)."
        elif not self.enable.value:
            self.status.value = "Off."

    # -- turning the mode on and off --------------------------------------------------------
    def _on_enable(self, on: bool) -> None:
        if on:
            if not self._usable() or not self.model.choices:
                self.enable.value = False
                self._update_state()
                return
            self._start()
        else:
            self._stop()
        self._update_state()

    def _start(self) -> None:
        if self._on_mouse not in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        layer = self.session.layer
        if layer.mode != "pan_zoom":
            self._old_mode = layer.mode
            layer.mode = "pan_zoom"
        self._ensure_points()
        self._ensure_model()

    def _stop(self) -> None:
        if self._on_mouse in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse)
        self.clear()
        if self.points is not None and self.points in self.viewer.layers:
            self.viewer.layers.remove(self.points)
        self.points = None
        if self.session is not None and self._old_mode is not None:
            self.session.layer.mode = self._old_mode
        self._old_mode = None

    def _on_model_changed(self) -> None:
        if self.enable.value and self.model.value != self.loaded_spec:
            self._ensure_model()
        self._update_state()

    @property
    def ready(self) -> bool:
        """The click model is loaded and matches the chosen one."""
        return self.segmenter is not None and self.loaded_spec == self.model.value

    @property
    def busy(self) -> bool:
        return self.loader is not None or self.worker is not None

    def _ensure_model(self) -> None:
        spec = self.model.value
        if spec is None or self.ready or self.loader is not None:
            return
        from napari.qt.threading import create_worker

        from ._torch_guard import prepare_torch

        prepare_torch()  # import torch on the GUI thread, safely next to napari's canvas
        self.segmenter = None
        worker = create_worker(_load, spec, _start_thread=False)
        # (bound methods, not lambdas: Qt keeps a lambda, and the viewer with it, alive)
        worker.returned.connect(self._loaded)
        worker.finished.connect(self._load_finished)
        self.loader = worker
        self._loading_spec = spec
        self._update_state("Loading the click model...")
        worker.start()

    def _loaded(self, out: Any) -> None:
        spec = self._loading_spec
        if isinstance(out, BaseException):
            message = describe_error(out, "Loading the click model")
            notify_error(message)
            self.enable.value = False
            self._update_state(message)
            return
        self.segmenter = out
        self.loaded_spec = spec
        self._update_state(
            f"Ready ({out.predictor.name} on {out.predictor.device.type}): click a missed "
            "lesion, Shift-click a false one."
        )

    def _load_finished(self) -> None:
        self.loader = None
        if self.enable.value and not self.ready:  # the choice changed while loading
            self._ensure_model()

    # -- the clicks layer --------------------------------------------------------------------
    def _ensure_points(self) -> Any:
        if self.points is not None and self.points in self.viewer.layers:
            return self.points
        ref = self.image if self.image is not None else self.session.layer
        geometry = geometry_kwargs(ref)
        geometry["metadata"][KEY] = {"role": CLICKS, "image_layer": ref.name}
        spacing = float(np.min(np.abs(np.asarray(ref.scale)[-2:])))
        self.points = self.add_layer(
            lambda: self.viewer.add_points(
                np.zeros((0, 3)),
                name="clicks",
                size=max(3.0, 5.0 / spacing),  # data units: about 5 mm across
                border_color="white",
                border_width=0.15,
                out_of_slice_display=False,
                **geometry,
            )
        )
        return self.points

    def _show_clicks(self) -> None:
        if self.points is None or self.points not in self.viewer.layers:
            return
        data = np.array([c[:3] for c in self.clicks], dtype=float).reshape(-1, 3)
        colors = [POSITIVE_COLOR if c[3] else NEGATIVE_COLOR for c in self.clicks]
        self.points.data = data
        if colors:
            self.points.face_color = colors
        self.points.refresh()

    def clear(self) -> None:
        """Forget all clicks (the mask stays as it is)."""
        self.clicks = []
        self._clicked_slice = None
        self._show_clicks()

    def _on_step(self, event: Any = None) -> None:
        """Slice changed: clicks are cleared unless "keep" is ticked."""
        if self.keep.value or not self.clicks or self.session is None:
            return
        z = self._current_slice()
        if z is not None and z != self._clicked_slice:
            self.clear()

    def _current_slice(self) -> int | None:
        layer = self.session.layer
        point = np.asarray(self.viewer.dims.point)[-layer.ndim :]
        index = np.asarray(layer.world_to_data(point), dtype=float)
        return round(float(index[self.axial_axis]))

    # -- clicks ------------------------------------------------------------------------------
    def _on_mouse(self, viewer: Any, event: Any) -> Any:
        """napari mouse-drag callback: a click without a drag is a Click to fix click."""
        if not self.enable.value or self.session is None or event.button != 1:
            return
        layer = self.session.layer
        active = viewer.layers.selection.active
        if getattr(active, "mode", "pan_zoom") not in ("pan_zoom",):
            return  # the user is painting (or picking, filling...): not ours
        position = tuple(event.position)
        negative = NEGATIVE_MODIFIER in event.modifiers
        yield
        dragged = False
        while event.type == "mouse_move":
            dragged = True
            yield
        if dragged:
            return
        index = layer.world_to_data(position)
        self.click_at(index, negative=negative)

    def click_at(self, index: Sequence[float], *, negative: bool = False) -> int | None:
        """A click at data index ``(z, y, x)`` of the mask layer; voxels changed (None: refused).

        ``negative`` (or the "not lesion" switch) makes it a "this is not lesion" click.
        """
        if not self.enable.value or self.session is None:
            return None
        layer = self.session.layer
        shape = layer.data.shape
        idx = [float(v) for v in np.asarray(index, dtype=float)[-3:]]
        if any(not (-0.5 <= v < n - 0.5) for v, n in zip(idx, shape, strict=True)):
            return None
        displayed = list(self.viewer.dims.displayed)
        offset = self.viewer.dims.ndim - layer.ndim
        if self.viewer.dims.ndisplay != 2 or offset + self.axial_axis in displayed:
            self._update_state("Click to fix works on axial slices in 2D: show an axial slice.")
            return None
        if not self.ready:
            self._update_state(
                "The click model is still loading: click again in a moment."
                if self.loader is not None
                else "No click model loaded."
            )
            self._ensure_model()
            return None
        if self.worker is not None:
            self._update_state("Still re-predicting the neighbouring slices: one moment.")
            return None
        z = round(idx[self.axial_axis])
        idx[self.axial_axis] = float(z)
        positive = not (negative or self.negative.value)
        if self._clicked_slice is not None and z != self._clicked_slice and not self.keep.value:
            self.clicks = []
        self._clicked_slice = z
        self.clicks.append((idx[0], idx[1], idx[2], positive))
        self._show_clicks()
        return self.fix(z)

    # -- re-predicting ---------------------------------------------------------------------
    def _geo(self) -> tuple[Any, Any]:
        """``(Volume, reorientation)`` of the CT (cached while its data is the same)."""
        if self._geometry is None or self._geometry[0] is not self.image.data:
            from ..inference.preprocess import slice_reorientation

            vol = layer_volume(self.image)
            self._geometry = (self.image.data, vol, slice_reorientation(vol))
        return self._geometry[1], self._geometry[2]

    def _jobs(self, z: int) -> tuple[list[dict], Any]:
        """The slices to re-predict for a click on source slice ``z``, and the reorientation."""
        from ..io.orientation import to_canonical

        vol, r = self._geo()
        shape = self.session.layer.data.shape
        canon = to_canonical(vol.data, r)
        mask_c = to_canonical(self.session.layer.data, r)
        spacing_c = [float(vol.spacing[a]) for a in r.axes]
        zc = canonical_index([z if a == self.axial_axis else 0 for a in range(3)], r, shape)[0]
        pos, neg = [], []
        for c in self.clicks:
            if round(c[self.axial_axis]) != z:
                continue
            _, row, col = canonical_index(c[:3], r, shape)
            (pos if c[3] else neg).append((row, col))
        k = int(np.floor(float(self.neighbours.value) / spacing_c[0] + 1e-6))
        slices = [s for s in range(zc - k, zc + k + 1) if 0 <= s < canon.shape[0]]
        kw = {
            "spacing_yx_mm": (spacing_c[1], spacing_c[2]),
            "intensity": vol.intensity,
            "roi": self.roi_box,
            "thickness_mm": spacing_c[0],
            "standardize": self.standardize,
            "tta": self.tta,
        }
        jobs = [
            {
                "slice": s,
                "args": (
                    np.ascontiguousarray(canon[s]),
                    np.asarray(mask_c[s]) > 0,
                    list(pos),
                    list(neg),
                ),
                "kw": kw,
            }
            for s in slices
        ]
        return jobs, r

    def fix(self, z: int) -> int | None:
        """Re-predict source slice ``z`` (and neighbours) from its clicks; voxels changed.

        With neighbours the work runs in a worker and this returns None; the
        edit lands (as one undo step) when it is done.
        """
        try:
            jobs, r = self._jobs(z)
        except Exception as err:
            notify_error(describe_error(err, "Click to fix"))
            return None
        if len(jobs) > 1:
            from napari.qt.threading import create_worker

            worker = create_worker(_predict_slices, self.segmenter, jobs, _start_thread=False)
            self._pending = (self.session, r, len(jobs))
            worker.returned.connect(self._neighbours_done)
            worker.finished.connect(self._worker_finished)
            self.worker = worker
            self._update_state(f"Re-predicting {len(jobs)} slices...")
            worker.start()
            return None
        return self._done(self.session, r, _predict_slices(self.segmenter, jobs), 1)

    def _neighbours_done(self, out: Any) -> None:
        session, r, n = self._pending
        self._pending = None
        self._done(session, r, out, n)

    def _worker_finished(self) -> None:
        self.worker = None

    def _done(self, session: Any, r: Any, out: Any, n: int) -> int | None:
        """Write the predicted slices into the mask as one undoable edit."""
        if isinstance(out, BaseException):
            message = describe_error(out, "Click to fix")
            notify_error(message)
            self._update_state(message)
            return None
        if session is not self.session or session is None:
            return None  # the mask changed meanwhile
        from ..io.orientation import to_canonical

        results, seconds = out
        layer = session.layer
        label = int(layer.selected_label) or 1
        new_c = {s: fixed for s, fixed in results}

        def write(data: np.ndarray) -> None:
            view = to_canonical(data, r)
            for s, fixed in new_c.items():
                old = view[s]
                view[s] = np.where(fixed, np.where(old > 0, old, label), 0).astype(old.dtype)

        span = _source_range(min(new_c), max(new_c), r, layer)
        changed = session.apply_slices(self.axial_axis, span, write)
        self.last_ms = 1000.0 * seconds / max(n, 1)
        t = getattr(self.segmenter, "timings", {}) or {}
        model_ms = 1000.0 * float(t.get("model", 0.0))
        what = "this slice" if n == 1 else f"{n} slices"
        self._update_state(
            f"{len(self.clicks)} click{'s' if len(self.clicks) != 1 else ''}: {what} "
            f"re-predicted, {changed:,} voxels changed · {self.last_ms:.0f} ms per slice "
            f"(model {model_ms:.0f} ms) · Ctrl+Z undoes."
        )
        return changed

    def close(self) -> None:
        self._stop()
        self.viewer.dims.events.current_step.disconnect(self._on_step)
        super().close()


def _source_range(lo: int, hi: int, r: Any, layer: Any) -> tuple[int, int]:
    """Canonical slices ``lo..hi`` -> the source axial index range ``[start, stop)``."""
    n = layer.data.shape[r.axes[0]]
    if r.flips[0]:
        lo, hi = n - 1 - hi, n - 1 - lo
    return lo, hi + 1
