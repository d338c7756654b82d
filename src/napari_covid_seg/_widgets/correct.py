"""The "Correct lesions" dock widget: live burden, tools, lesion list, review, lungs, save/export.

It binds to one Labels layer, the mask being edited (the lesion mask, or the
lung mask while "Correct lung mask" is on), and to the CT Image layer it
belongs to (for HU-limited paint, density and export). The mask box follows
the layer selected in napari's layer list. All edits, including napari brush
strokes, go through an :class:`~._edit_session.EditSession`: multi-level
undo/redo (Ctrl+Z / Ctrl+Shift+Z on the layer), an autosave at most every few
seconds keyed by the fingerprint of the CT, and a change record that keeps the
live burden (lesion mL, count, % of each lung, ground glass vs consolidation)
current after every stroke. When a CT with an autosave is opened again, the
widget offers to restore the mask (and the corrected lung mask).

Layout: the mask and CT pickers and the live burden on top, then tabs (Tools,
Clicks, Lesions, Review, Lungs, Learn, Save) so that the widget fits a laptop screen
beside the Segment and Fine-tune widgets. "Clicks" is "Click to fix"
(:mod:`._clicks_panel`); "Learn" is the within-volume "Learn from my
corrections" panel (:mod:`._learn_panel`).
"""

from __future__ import annotations

import datetime as _dt
import weakref
from pathlib import Path
from typing import Any

import napari.viewer
import numpy as np
from magicgui.widgets import Container, Label
from qtpy.QtCore import QEvent, QObject, QSize
from qtpy.QtWidgets import QApplication, QFileDialog, QTabWidget, QWidget

from ..correction import AutosaveStore, counted_changes, default_autosave_root, fingerprint
from ..errors import CovidSegError
from ._burden_panel import BurdenPanel, spacing_of
from ._clicks_panel import ClicksPanel
from ._edit_session import EditSession
from ._export_panel import ExportJob, ExportPanel
from ._layers import (
    KEY,
    LESIONS,
    LUNGS,
    find_image_for,
    find_partner,
    follow_layers,
    geometry_kwargs,
    is_ct_image,
    is_labels,
    layer_picker,
    layer_volume,
    plugin_meta,
    role,
    scrolled,
    wrap_labels,
)
from ._learn_panel import LearnPanel
from ._lesion_panel import LesionPanel
from ._lungs_panel import LungsPanel, add_lungs_layer, report_text, stored_lungs
from ._notify import Confirm, ask_yes_no, describe_error, notify_error, notify_info
from ._review_panel import ReviewPanel
from ._tools_panel import ToolsPanel

#: Autosave at most this often (seconds) while editing; always on close.
AUTOSAVE_INTERVAL_S = 3.0


def _is_3d_labels(layer: Any) -> bool:
    return is_labels(layer) and layer.ndim == 3


class _Tabs(QTabWidget):
    """The tool pages (magicgui has no tab container); asks for most of a laptop screen."""

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        return QSize(hint.width(), max(hint.height(), 420))


class _WindowWatcher(QObject):
    """Saves pending edits when napari's main window closes.

    (A dock widget gets no close event of its own when the window closes.)
    """

    def __init__(self, widget: CorrectWidget) -> None:
        super().__init__(widget.native)
        self._widget = weakref.ref(widget)
        self._window: Any = None
        widget.native.installEventFilter(self)

    def eventFilter(self, watched: Any, event: Any) -> bool:
        ref = getattr(self, "_widget", None)  # (not yet set, or being torn down)
        widget = ref() if ref is not None else None
        if widget is None:
            return False
        if watched is widget.native and event.type() == QEvent.Type.Show:
            window = widget.native.window()
            if window is not widget.native and self._window is not window:
                window.installEventFilter(self)
                self._window = window
        elif watched is self._window and event.type() == QEvent.Type.Close:
            widget.flush_autosave()
        return False


class CorrectWidget(Container):
    """Dock widget "Correct lesions" (a magicgui container).

    On top, ``labels_combo`` (the mask being edited, a ``napari.layers.Labels``
    picker) and ``image_combo`` (its CT, a ``napari.layers.Image`` picker), both
    following the viewer's layers; ``info``; the live burden; then the tabs.
    ``labels`` is the Labels layer being edited (not magicgui's "show labels" flag:
    this container shows no labels of its own, its picker row does).

    Args:
        napari_viewer: the viewer (injected by napari).
        autosave_root: folder for autosaves (default: the per-user autosave folder).
        confirm: ``(title, text) -> bool`` for questions (restore, update a case;
            default: a dialog).
        autosave_interval_s: minimum seconds between two autosaves.
        save_path: ``(suggested path) -> path or None`` for "Save as NIfTI..."
            (default: a file dialog).
    """

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        *,
        autosave_root: str | None = None,
        confirm: Confirm | None = None,
        autosave_interval_s: float = AUTOSAVE_INTERVAL_S,
        save_path: Any = None,
    ) -> None:
        self.session: EditSession | None = None  # before Container.__init__ reads ``labels``
        super().__init__(labels=False)
        self.viewer = napari_viewer
        root = default_autosave_root() if autosave_root is None else autosave_root
        self.autosaves = AutosaveStore(root)
        self.lung_autosaves = AutosaveStore(self.autosaves.root / "lungs")
        self.predictions = AutosaveStore(self.autosaves.root / "predictions")
        self.confirm: Confirm = confirm or (
            lambda title, text: ask_yes_no(self.native, title, text)
        )
        self.save_path = save_path or self._save_dialog
        self.autosave_interval_s = autosave_interval_s
        self.image: Any = None
        self.fingerprint: str | None = None
        self.lungs_worker: Any = None
        self._intensity = "hu"
        self._fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._offered: set[str] = set()
        self._quiet = False  # adding layers ourselves: do not follow napari's selection
        self._inserted: Any = None  # napari activates each new layer; the picker decides those
        self._build()
        self._watcher = _WindowWatcher(self)
        follow_layers(napari_viewer, self._on_layers_changed)
        napari_viewer.layers.selection.events.active.connect(self._on_active)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.flush_autosave)
        self._pick_mask()
        for layer in list(napari_viewer.layers):
            self._watch_paint(layer)
            self.offer_restore(layer)
        self._bind(self.labels_combo.value)

    # -- building ----------------------------------------------------------------------------
    def _build(self) -> None:
        from napari.layers import Image
        from napari.layers import Labels as LabelsLayer

        self.labels_combo = layer_picker(
            self.viewer,
            LabelsLayer,
            _is_3d_labels,
            name="mask_layer",
            label="Mask",
            tooltip="The Labels layer being edited (follows the layer list)",
        )
        self.labels_combo.changed.connect(lambda *_: self._bind(self.labels_combo.value))
        self.image_combo = layer_picker(
            self.viewer,
            Image,
            is_ct_image,
            name="ct_layer",
            label="CT",
            tooltip="The CT Image layer the mask belongs to",
        )
        self.image_combo.changed.connect(lambda *_: self._rebind_image())
        for combo in (self.labels_combo, self.image_combo):
            combo.native.setMinimumContentsLength(6)
        pickers = Container(
            name="pickers",
            layout="horizontal",
            widgets=[self.labels_combo, self.image_combo],
        )
        pickers.margins = (0, 0, 0, 0)
        self.info = Label(name="info", value="")
        wrap_labels(self.info)
        self.burden_panel = BurdenPanel()
        self.lesion_panel = LesionPanel(self.viewer)
        self.review_panel = ReviewPanel(self.viewer)
        self.review_panel.on_change = self._on_reviewed
        self.tools_panel = ToolsPanel()
        self.tools_panel.selected_lesion = self.lesion_panel.selected_voxels
        self.lungs_panel = LungsPanel()
        self.lungs_panel.on_show = self.show_lungs
        self.lungs_panel.on_edit = self.edit_lungs
        self.lungs_panel.on_compute = self.compute_lungs
        self.learn_panel = LearnPanel()
        self.clicks_panel = ClicksPanel(self.viewer, add_layer=self._add_quietly)
        self.export_panel = ExportPanel(confirm=lambda t, q: self.confirm(t, q))
        self.export_panel.make_job = self._export_job
        self.export_panel.save = self.save_nifti
        self.tabs = _Tabs()
        self.tabs.setDocumentMode(True)
        for page, title in (
            (self.tools_panel, "Tools"),
            (self.clicks_panel, "Clicks"),
            (self.lesion_panel, "Lesions"),
            (self.review_panel, "Review"),
            (self.lungs_panel, "Lungs"),
            (self.learn_panel, "Learn"),
            (self.export_panel, "Save"),
        ):
            self.tabs.addTab(scrolled(getattr(page, "native", page)), title)
        self.tabs.currentChanged.connect(lambda *_: self._refresh_learn())
        self.lesion_panel.is_shown = lambda: (
            self.tabs.tabText(self.tabs.currentIndex()) == "Lesions"
        )
        self.tabs.currentChanged.connect(lambda *_: self.lesion_panel.refresh_if_stale())
        self.lesion_panel.components_source = self._live_components
        self.margins = (4, 4, 4, 4)
        self.extend([pickers, self.info])
        # Plain Qt: the burden read-out and the tab widget (magicgui has no tab container);
        # the pages are magicgui containers, except Tools and the lesion table.
        layout = self.native.layout()
        layout.setSpacing(4)
        layout.addWidget(self.burden_panel)
        layout.addWidget(self.tabs, 1)

    def show_tab(self, title: str) -> QWidget:
        """Bring tab ``title`` ("Tools", "Clicks", "Lesions", ...) to the front."""
        for i in range(self.tabs.count()):
            if self.tabs.tabText(i) == title:
                self.tabs.setCurrentIndex(i)
                return self.tabs.widget(i)
        raise KeyError(title)

    # -- binding -----------------------------------------------------------------------------
    @property
    def labels(self) -> Any:
        return self.session.layer if self.session is not None else None

    def _bind(self, labels: Any) -> None:
        """Work on ``labels`` (None: nothing); saves and releases the previous layer."""
        if self.session is not None and labels is self.session.layer:
            return
        self._unbind()
        if labels is None:
            self._set_panels(None)
            return
        image = find_image_for(self.viewer, labels)
        if image is not None:
            with self.image_combo.changed.blocked():
                self.image_combo.value = image
        else:
            image = self.image_combo.value
            if image is not None and image.data.shape != labels.data.shape:
                image = None
        self.image = image
        self.fingerprint = self._fingerprint(image) if image is not None else None
        store = self.lung_autosaves if role(labels) == LUNGS else self.autosaves
        autosave = (store, self.fingerprint) if self.fingerprint else None
        self.session = EditSession(
            labels,
            None if image is None else np.asarray(image.data),
            autosave=autosave,
            autosave_meta=self._autosave_meta,
            interval_s=self.autosave_interval_s,
            on_change=self._on_session_change,
            on_replaced=self._on_mask_replaced,
            on_record=self._on_record,
        )
        self._keep_prediction()
        self._set_panels(self.session)

    def _keep_prediction(self) -> None:
        """Store the model's original prediction beside the autosave (for provenance)."""
        prediction = plugin_meta(self.labels).get("prediction")
        if self.fingerprint and prediction is not None and role(self.labels) != LUNGS:
            self.predictions.save(self.fingerprint, np.asarray(prediction), {})

    def _on_mask_replaced(self) -> None:
        """A new segmentation replaced the mask: new review queue, prediction, lungs, counts."""
        self._keep_prediction()
        lesions, lungs_layer = self.lesion_layer(), self.lungs_layer()
        new_lungs = stored_lungs(lesions) if lesions is not None else None
        if lungs_layer is not None and lungs_layer is not self.labels and new_lungs is not None:
            if lungs_layer.data is not new_lungs:
                lungs_layer.data = new_lungs
        self._set_panels(self.session)

    def _rebind_image(self) -> None:
        labels = self.labels
        if labels is not None and self.image_combo.value is not self.image:
            self._unbind()
            self._bind(labels)

    def _unbind(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = None
        self.image = None
        self.fingerprint = None

    def _set_panels(self, session: EditSession | None) -> None:
        axial = self._axial_axis()
        self._intensity = "hu"
        if self.image is not None:
            self._intensity = layer_volume(self.image).intensity
        self.update_burden()
        self.lesion_panel.set_session(session, axial)
        self.review_panel.set_layer(session.layer if session else None, axial)
        self.tools_panel.set_session(session, self._intensity, axial)
        self.clicks_panel.set_context(session, self.image, axial)
        lesions = session is not None and role(session.layer) != LUNGS
        self.learn_panel.set_context(
            session if lesions else None,
            self.image,
            axial,
            reviewed=self.review_panel.reviewed_slices,
            prediction=lambda: self._prediction(),
            model=lambda: self._model_spec(),
        )
        self._update_lungs_panel()
        self._update_info()

    def _prediction(self) -> np.ndarray | None:
        labels = self.lesion_layer()
        prediction = plugin_meta(labels).get("prediction") if labels is not None else None
        if prediction is None or np.shape(prediction) != labels.data.shape:
            return None
        return np.asarray(prediction)

    def _model_spec(self) -> str:
        """The model version the mask came from (its folder if known), for "Learn"."""
        meta = plugin_meta(self.lesion_layer()) if self.lesion_layer() is not None else {}
        path = meta.get("model_path")
        if path and Path(str(path)).exists():
            return str(path)
        return str(meta.get("model_version") or "default")

    def _refresh_learn(self) -> None:
        if self.tabs.tabText(self.tabs.currentIndex()) == "Learn":
            self.learn_panel.refresh()

    def _axial_axis(self) -> int:
        labels = self.labels
        if labels is None:
            return 0
        for layer in (labels, self.lesion_layer()):
            meta = plugin_meta(layer) if layer is not None else {}
            if "axial_axis" in meta:
                return int(meta["axial_axis"])
        try:
            return int(layer_volume(self.image or labels).reorientation.axial_axis)
        except (CovidSegError, ValueError, KeyError):
            return 0

    def _update_info(self) -> None:
        if self.session is None:
            self.info.value = "Choose a lesion mask (Labels layer) to correct."
            return
        meta = plugin_meta(self.lesion_layer() or self.session.layer)
        parts = [f"model: {meta.get('model_version', 'unknown')}"]
        if role(self.session.layer) == LUNGS:
            parts.insert(0, "<b>editing the lung mask</b>")
        if self.image is None:
            parts.append("no CT image: HU-limited paint, autosave and export are off")
        elif self.session.last_saved_at is not None:
            saved = _dt.datetime.fromtimestamp(self.session.last_saved_at).strftime("%H:%M:%S")
            parts.append(f"autosaved {saved}")
        self.info.value = " · ".join(parts)

    def _fingerprint(self, image: Any) -> str:
        """Fingerprint of a CT layer's voxels and geometry (cached while its data is the same)."""
        cached = self._fingerprints.get(image)
        if cached is None or cached[0] != id(image.data):
            vol = layer_volume(image)
            cached = (id(image.data), fingerprint(vol.data, vol.affine))
            self._fingerprints[image] = cached
        return cached[1]

    # -- lesion / lung layers and the live burden ------------------------------------------------
    def lesion_layer(self) -> Any:
        """The lesion mask: the bound layer, or while editing lungs the lesions they belong to."""
        labels = self.labels
        if labels is None or role(labels) != LUNGS:
            return labels
        partner = find_partner(self.viewer, labels, LESIONS)
        if partner is not None:
            return partner
        name = plugin_meta(labels).get("lesion_layer")
        if name in self.viewer.layers and is_labels(self.viewer.layers[name]):
            return self.viewer.layers[name]
        return None

    def lungs_layer(self) -> Any:
        """The lung mask Labels layer of the current lesion mask, if shown once."""
        labels = self.labels
        if labels is not None and role(labels) == LUNGS:
            return labels
        lesions = self.lesion_layer()
        if lesions is None:
            return None
        partner = find_partner(self.viewer, lesions, LUNGS)
        if partner is not None:
            return partner
        for layer in self.viewer.layers:
            if role(layer) == LUNGS and plugin_meta(layer).get("lesion_layer") == lesions.name:
                return layer
        return None

    def update_burden(self) -> None:
        """Point the live burden at the current lesion, lung and CT arrays."""
        lesions = self.lesion_layer()
        if lesions is None:
            self.burden_panel.set_sources(None)
            return
        lungs_layer = self.lungs_layer()
        lungs = lungs_layer.data if lungs_layer is not None else stored_lungs(lesions)
        if lungs is not None and lungs.shape != lesions.data.shape:
            lungs = None
        if lungs is None:
            note = "No lung mask, so no % of lungs (Lungs tab: compute one)."
        elif lungs_layer is not None:
            note = f"Lungs from '{lungs_layer.name}'."
        else:
            note = ""
        report = plugin_meta(lesions).get("lung_mask")
        if isinstance(report, dict) and report.get("status") == "skipped":
            note = (note + " " if note else "") + "The lung mask looked wrong: check it (Lungs)."
        image = None
        if self.image is not None and self.image.data.shape == lesions.data.shape:
            image = np.asarray(self.image.data)
        self.burden_panel.set_sources(
            lesions.data, spacing_of(lesions), lungs, image, self._intensity, note
        )

    def _live_components(self) -> Any:
        burden = self.burden_panel.burden
        if burden is None or self.labels is None or burden.lesions is not self.labels.data:
            return None
        return burden.counter.components()

    def _on_record(self, flat: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
        """Every change of the bound mask: move the live numbers by it."""
        burden = self.burden_panel.burden
        data = self.labels.data if self.labels is not None else None
        if burden is not None and data is not None:
            if role(self.labels) == LUNGS and burden.lungs is data:
                self.burden_panel.lungs_changed(flat, before, after)
                return
            if burden.lesions is data:
                self.burden_panel.lesions_changed(flat, before, after)
                return
        self.update_burden()

    def quantification(self) -> Any:
        """The live :class:`~napari_covid_seg.inference.quantify.Quantification` (or None)."""
        return self.burden_panel.quantification()

    # -- lungs -------------------------------------------------------------------------------------
    def _update_lungs_panel(self) -> None:
        lesions = self.lesion_layer()
        layer = self.lungs_layer()
        report = report_text(plugin_meta(lesions).get("lung_mask")) if lesions is not None else ""
        has = lesions is not None and (layer is not None or stored_lungs(lesions) is not None)
        self.lungs_panel.set_state(
            report=report if lesions is not None else "Choose a lesion mask first.",
            has_lungs=has,
            shown=layer is not None and layer.visible,
            editing=self.labels is not None and role(self.labels) == LUNGS,
            busy=self.lungs_worker is not None,
        )

    def _add_quietly(self, add: Any) -> Any:
        """Add a layer without the mask box jumping to it (napari selects new layers)."""
        keep = self.labels
        self._quiet = True
        try:
            layer = add()
            if keep is not None and keep in self.viewer.layers:
                self.viewer.layers.selection.active = keep
        finally:
            self._quiet = False
        return layer

    def show_lungs(self, show: bool = True) -> Any:
        """Show (or hide) the lung mask as a Labels layer; returns it."""
        layer = self.lungs_layer()
        lesions = self.lesion_layer()
        if layer is None and show:
            lungs = stored_lungs(lesions) if lesions is not None else None
            image = self.image
            if lungs is None or image is None:
                notify_error("There is no lung mask for this lesion mask: compute one first.")
                self._update_lungs_panel()
                return None
            layer = self._add_quietly(lambda: add_lungs_layer(self.viewer, image, lungs, lesions))
        if layer is not None:
            layer.visible = show
        self.update_burden()
        self._update_lungs_panel()
        return layer

    def edit_lungs(self, edit: bool = True) -> Any:
        """Make the lung mask the mask being edited (or go back to the lesions)."""
        if not edit:
            target = self.lesion_layer()
        else:
            target = self.show_lungs(True)
        if target is None:
            self._update_lungs_panel()
            return None
        self._show_mask(target)
        self.viewer.layers.selection.active = target
        if edit:
            target.selected_label = 1
            notify_info("Editing the lung mask: paint 1 = right lung, 2 = left lung, 0 erases.")
        self._update_lungs_panel()
        return target

    def compute_lungs(self) -> Any:
        """Compute a lung mask from the CT in a worker; it is kept with the lesion mask."""
        lesions = self.lesion_layer()
        if lesions is None or self.image is None:
            notify_error("Choose the lesion mask and its CT image first.")
            return None
        if self.lungs_worker is not None:
            return None
        from napari.qt.threading import create_worker

        volume = layer_volume(self.image)
        worker = create_worker(_lung_job, volume, _start_thread=False)
        worker.returned.connect(lambda out, layer=lesions: self._lungs_computed(layer, out))
        worker.finished.connect(self._lungs_finished)
        self.lungs_worker = worker
        self._update_lungs_panel()
        worker.start()
        return worker

    def _lungs_computed(self, lesions: Any, outcome: tuple[Any, Any]) -> None:
        lungs, report = outcome
        if isinstance(lungs, BaseException):
            notify_error(describe_error(lungs, "The lung mask"))
            return
        if lesions not in self.viewer.layers or lungs.shape != lesions.data.shape:
            return
        meta = plugin_meta(lesions)
        meta["lungs"] = lungs
        meta["lung_mask"] = report
        self.show_lungs(True)

    def _lungs_finished(self) -> None:
        self.lungs_worker = None
        self._update_lungs_panel()

    # -- events --------------------------------------------------------------------------------
    def _on_session_change(self) -> None:
        self.lesion_panel.schedule_refresh()
        self.tools_panel.update_state()
        self._refresh_learn()
        self._update_info()

    def _on_reviewed(self) -> None:
        if self.session is not None:
            self.session.touch()
        self._refresh_learn()

    def _show_mask(self, layer: Any) -> None:
        """Make ``layer`` the choice of the mask picker and the mask being edited."""
        with self.labels_combo.changed.blocked():
            self.labels_combo.value = layer
        self._bind(layer)

    def _pick_mask(self, inserted: Any = None) -> Any:
        """The mask picker's choice after a change of the layer list.

        A new lesion mask (or any mask when none was chosen) becomes the choice;
        otherwise the layer being edited stays; when it is gone, the newest mask.
        """
        masks = [layer for layer in self.viewer.layers if _is_3d_labels(layer)]
        current = self.labels
        if (
            inserted is not None
            and inserted in masks
            and (role(inserted) == LESIONS or current is None)
        ):
            pick = inserted
        elif current in masks:
            pick = current
        else:
            pick = masks[-1] if masks else None
        if pick is not None:  # (with no mask at all the picker is empty)
            with self.labels_combo.changed.blocked():
                self.labels_combo.value = pick
        return pick

    def _on_layers_changed(self, event: Any = None) -> None:
        """Layers added, removed, moved or renamed: both pickers follow, then the binding."""
        kind = getattr(event, "type", "")
        layer = getattr(event, "value", None)
        with self.labels_combo.changed.blocked(), self.image_combo.changed.blocked():
            self.reset_choices()
            if self.image is not None and self.image in self.viewer.layers:
                self.image_combo.value = self.image
        pick = self._pick_mask(layer if kind == "inserted" else None)
        if kind == "removed":
            self._on_removed(layer)
        self._bind(pick)
        if self.session is not None and self.image_combo.value is not self.image:
            self._rebind_image()
        if kind == "inserted":
            self._inserted = layer
            self._watch_paint(layer)
            self.offer_restore(layer)

    def _watch_paint(self, layer: Any) -> None:
        if _is_3d_labels(layer):
            layer.events.paint.connect(self._on_any_paint)

    def _on_any_paint(self, event: Any) -> None:
        """Painting on another Labels layer makes it the mask being edited."""
        layer = getattr(event, "source", None)
        if layer is None or layer is self.labels or layer not in self.viewer.layers:
            return
        self._show_mask(layer)

    def _on_removed(self, layer: Any) -> None:
        if self.session is not None and layer is self.session.layer:
            self._unbind()
            self._set_panels(None)
        elif layer is self.image and self.session is not None:
            self.session.flush()
        elif role(layer) == LUNGS:
            self.update_burden()
            self._update_lungs_panel()
        if _is_3d_labels(layer):
            layer.events.paint.disconnect(self._on_any_paint)

    def _on_active(self, event: Any) -> None:
        """The mask box follows the Labels layer selected in napari's layer list."""
        layer = getattr(event, "value", None)
        if layer is None or layer is self._inserted:
            return  # napari selects every new layer itself; the picker's rule decides those
        self._inserted = None
        if self._quiet or layer is self.labels or not _is_3d_labels(layer):
            return
        self._show_mask(layer)

    def flush_autosave(self) -> None:
        """Write pending edits to the autosave now."""
        if self.session is not None:
            self.session.flush()

    def close(self) -> None:
        """Save pending edits, release the mask, close."""
        self.clicks_panel.close()
        self._unbind()
        super().close()

    # -- autosave ------------------------------------------------------------------------------
    def _autosave_meta(self) -> dict:
        labels = self.labels
        meta = plugin_meta(labels) if labels is not None else {}
        return {
            "layer_name": labels.name if labels is not None else None,
            "image_layer": self.image.name if self.image is not None else None,
            "model_version": meta.get("model_version"),
            "axial_axis": meta.get("axial_axis"),
            "review": meta.get("review"),
        }

    def offer_restore(self, layer: Any) -> Any:
        """If ``layer`` is a CT with an autosave, ask and restore it; returns the new layer."""
        if not is_ct_image(layer) or layer.ndim != 3:
            return None
        fp = self._fingerprint(layer)
        if fp in self._offered or not self.autosaves.exists(fp):
            return None
        self._offered.add(fp)
        loaded = self.autosaves.load(fp)
        if loaded is None or loaded[0].shape != layer.data.shape:
            return None
        mask, meta = loaded
        lungs = self.lung_autosaves.load(fp) if self.lung_autosaves.exists(fp) else None
        if lungs is not None and lungs[0].shape != mask.shape:
            lungs = None
        when = _dt.datetime.fromtimestamp(float(meta.get("saved_at", 0))).strftime("%Y-%m-%d %H:%M")
        also = " and the corrected lung mask" if lungs is not None else ""
        if not self.confirm(
            "Restore autosaved lesion mask?",
            f"An autosaved lesion mask of '{layer.name}' from {when} exists "
            f"({int(np.count_nonzero(mask))} lesion voxels){also}. Restore it? "
            "(No deletes the autosave.)",
        ):
            self.autosaves.discard(fp)
            self.lung_autosaves.discard(fp)
            return None
        return self._restore(layer, mask, meta, fp, None if lungs is None else lungs[0])

    def _restore(
        self, image: Any, mask: np.ndarray, meta: dict, fp: str, lungs: np.ndarray | None = None
    ) -> Any:
        geometry = geometry_kwargs(image)
        info: dict = {
            "role": LESIONS,
            "image_layer": image.name,
            "model_version": meta.get("model_version"),
            "restored_from_autosave": True,
        }
        if meta.get("axial_axis") is not None:
            info["axial_axis"] = int(meta["axial_axis"])
        if isinstance(meta.get("review"), dict):
            info["review"] = meta["review"]
            info["slice_uncertainty"] = meta["review"].get("uncertainty")
        prediction = self.predictions.load(fp)
        if prediction is not None and prediction[0].shape == mask.shape:
            info["prediction"] = prediction[0].astype(mask.dtype)
        if lungs is not None:
            info["lungs"] = lungs.astype(np.uint8)
        geometry["metadata"][KEY] = info
        name = meta.get("layer_name") or f"{image.name} lesions"
        if name in self.viewer.layers:
            name = f"{name} (restored)"
        layer = self.viewer.add_labels(mask, name=name, opacity=0.6, **geometry)
        notify_info(f"Restored the autosaved lesion mask of '{image.name}' as '{layer.name}'.")
        # The pickers follow the new layer (one reload per viewer event); make sure the
        # mask picker shows it even while an outer layer event is still being handled.
        with self.labels_combo.changed.blocked():
            self.labels_combo.reset_choices()
        self._show_mask(layer)
        if lungs is not None:
            self.show_lungs(True)
        return layer

    # -- save and export -------------------------------------------------------------------------
    def _suggested_path(self) -> str:
        labels = self.labels
        suffix = "lungs" if role(labels) == LUNGS else "lesions"
        source = layer_volume(self.image).source_path if self.image is not None else None
        if source is not None:
            from ..io.nifti import stem

            folder = Path(source).parent if Path(source).is_file() else Path(source)
            return str(folder / f"{stem(source)}_{suffix}.nii.gz")
        return str(Path.home() / f"{labels.name.replace(' ', '_')}.nii.gz")

    def _save_dialog(self, suggested: str) -> str | None:
        path, _ = QFileDialog.getSaveFileName(
            self.native, "Save mask as NIfTI", suggested, "NIfTI (*.nii.gz *.nii)"
        )
        return path or None

    def save_nifti(self, path: str | None = None) -> str | None:
        """Write the mask being edited as NIfTI with the CT's geometry; returns the path."""
        from ..io import is_nifti_path, write_mask

        labels = self.labels
        if labels is None or self.image is None:
            notify_error("Choose the mask and the CT image it belongs to before saving.")
            return None
        path = path or self.save_path(self._suggested_path())
        if not path:
            return None
        if not is_nifti_path(path):
            path = str(path) + ".nii.gz"
        self.session.sync()
        try:
            written = write_mask(Path(path), np.asarray(labels.data), layer_volume(self.image))
        except (CovidSegError, OSError) as err:
            notify_error(describe_error(err, "Saving the mask"))
            return None
        self.export_panel.status.value = f"Saved '{labels.name}' as {written}."
        notify_info(f"Saved '{labels.name}' as {written} (the CT's geometry).")
        return str(written)

    def _export_job(self, folder: str, case_id: str | None) -> ExportJob | None:
        labels = self.lesion_layer()
        if labels is None or self.image is None:
            notify_error("Choose the lesion mask and the CT image it belongs to before exporting.")
            return None
        if self.session is not None:
            self.session.sync()
        mask = np.array(labels.data, copy=True)
        meta = plugin_meta(labels)
        provenance: dict = {
            "model_version": meta.get("model_version"),
            "mask_layer": labels.name,
            "corrected_in": "napari-covid-seg Correct lesions",
        }
        prediction = meta.get("prediction")
        if prediction is not None and np.shape(prediction) == mask.shape:
            changes = counted_changes(np.asarray(prediction), mask)
            provenance["voxels_added"] = changes["added"]
            provenance["voxels_removed"] = changes["removed"]
        burden = self.quantification()
        if burden is not None:
            provenance["burden"] = burden.to_dict()
        reviewed = self.review_panel.reviewed_slices() if labels is self.labels else None
        if labels is not self.labels:
            from ._review_panel import queue_for

            reviewed = sorted(queue_for(labels, self._axial_axis()).reviewed)
        return ExportJob(
            folder=folder,
            image=layer_volume(self.image),
            mask=mask,
            case_id=case_id,
            reviewed_slices=reviewed or None,
            provenance=provenance,
            image_fingerprint=self.fingerprint,
        )


def _lung_job(volume: Any) -> tuple[Any, Any]:
    """Worker body: ``(lungs, report)``, or ``(error, None)``; never raises."""
    try:
        from ..inference.lungs import lung_mask, lung_volumes_ml

        lungs = lung_mask(volume)
        right, left = lung_volumes_ml(lungs, volume.voxel_volume_ml)
    except Exception as err:
        return err, None
    report = {
        "status": "computed",
        "reason": "",
        "right_ml": right,
        "left_ml": left,
        "notes": ["Computed in the Correct widget; check it before trusting the %."],
    }
    return lungs, report
