"""The "Correct lesions" dock widget: lesion list, review queue, tools, undo, autosave, export.

It binds to one lesion Labels layer (and the CT Image layer it belongs to, for
HU-limited paint and export). All edits, including napari brush strokes, go
through an :class:`~._edit_session.EditSession`: multi-level undo/redo
(Ctrl+Z / Ctrl+Shift+Z on the layer) and an autosave at most every few seconds,
keyed by the fingerprint of the CT. When a CT with an autosave is opened again,
the widget offers to restore the mask.
"""

from __future__ import annotations

import datetime as _dt
import weakref
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QApplication, QFormLayout, QLabel, QVBoxLayout, QWidget

from ..correction import AutosaveStore, counted_changes, default_autosave_root, fingerprint
from ..errors import CovidSegError
from ._edit_session import EditSession
from ._export_panel import ExportJob, ExportPanel
from ._layers import (
    KEY,
    LESIONS,
    LayerCombo,
    find_image_for,
    geometry_kwargs,
    is_ct_image,
    is_labels,
    layer_volume,
    plugin_meta,
    role,
)
from ._lesion_panel import LesionPanel
from ._notify import Confirm, ask_yes_no, notify_error, notify_info
from ._review_panel import ReviewPanel
from ._tools_panel import ToolsPanel

#: Autosave at most this often (seconds) while editing; always on close.
AUTOSAVE_INTERVAL_S = 3.0


def _is_3d_labels(layer: Any) -> bool:
    return is_labels(layer) and layer.ndim == 3


class CorrectWidget(QWidget):
    """Dock widget "Correct lesions".

    Args:
        napari_viewer: the viewer (injected by napari).
        autosave_root: folder for autosaves (default: the per-user autosave folder).
        confirm: ``(title, text) -> bool`` for the restore question (default: a dialog).
        autosave_interval_s: minimum seconds between two autosaves.
    """

    def __init__(
        self,
        napari_viewer: Any,
        *,
        autosave_root: str | None = None,
        confirm: Confirm | None = None,
        autosave_interval_s: float = AUTOSAVE_INTERVAL_S,
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        root = default_autosave_root() if autosave_root is None else autosave_root
        self.autosaves = AutosaveStore(root)
        self.predictions = AutosaveStore(self.autosaves.root / "predictions")
        self.confirm: Confirm = confirm or (lambda title, text: ask_yes_no(self, title, text))
        self.autosave_interval_s = autosave_interval_s
        self.session: EditSession | None = None
        self.image: Any = None
        self.fingerprint: str | None = None
        self._fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._offered: set[str] = set()
        self._watching: Any = None
        self._build()
        napari_viewer.layers.events.inserted.connect(self._on_inserted)
        napari_viewer.layers.events.removed.connect(self._on_removed)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.flush_autosave)
        for layer in list(napari_viewer.layers):
            self.offer_restore(layer)
        self._bind(self.labels_combo.current_layer())

    # -- building ----------------------------------------------------------------------------
    def _build(self) -> None:
        self.labels_combo = LayerCombo(
            self.viewer, _is_3d_labels, self, prefer=lambda layer: role(layer) == LESIONS
        )
        self.labels_combo.currentIndexChanged.connect(
            lambda *_: self._bind(self.labels_combo.current_layer())
        )
        self.image_combo = LayerCombo(self.viewer, is_ct_image, self)
        self.image_combo.currentIndexChanged.connect(lambda *_: self._rebind_image())
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.lesion_panel = LesionPanel(self.viewer)
        self.review_panel = ReviewPanel(self.viewer)
        self.review_panel.on_change = self._on_reviewed
        self.tools_panel = ToolsPanel()
        self.export_panel = ExportPanel()
        self.export_panel.make_job = self._export_job
        form = QFormLayout()
        form.addRow("Lesion mask", self.labels_combo)
        form.addRow("CT image", self.image_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.info)
        for panel in (self.lesion_panel, self.review_panel, self.tools_panel, self.export_panel):
            layout.addWidget(panel)
        layout.addStretch(1)

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
            self.image_combo.blockSignals(True)
            self.image_combo.set_layer(image)
            self.image_combo.blockSignals(False)
        else:
            image = self.image_combo.current_layer()
            if image is not None and image.data.shape != labels.data.shape:
                image = None
        self.image = image
        self.fingerprint = self._fingerprint(image) if image is not None else None
        autosave = (self.autosaves, self.fingerprint) if self.fingerprint else None
        self.session = EditSession(
            labels,
            None if image is None else np.asarray(image.data),
            autosave=autosave,
            autosave_meta=self._autosave_meta,
            interval_s=self.autosave_interval_s,
            on_change=self._on_session_change,
            on_replaced=self._on_mask_replaced,
        )
        self._keep_prediction()
        self._set_panels(self.session)

    def _keep_prediction(self) -> None:
        """Store the model's original prediction beside the autosave (for provenance)."""
        prediction = plugin_meta(self.labels).get("prediction")
        if self.fingerprint and prediction is not None:
            self.predictions.save(self.fingerprint, np.asarray(prediction), {})

    def _on_mask_replaced(self) -> None:
        """A new segmentation replaced the mask: new review queue, new prediction."""
        self._keep_prediction()
        self._set_panels(self.session)

    def _rebind_image(self) -> None:
        labels = self.labels
        if labels is not None and self.image_combo.current_layer() is not self.image:
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
        intensity = "hu"
        if self.image is not None:
            intensity = layer_volume(self.image).intensity
        self.lesion_panel.set_session(session, axial)
        self.review_panel.set_layer(session.layer if session else None, axial)
        self.tools_panel.set_session(session, intensity, axial)
        self._update_info()

    def _axial_axis(self) -> int:
        labels = self.labels
        if labels is None:
            return 0
        meta = plugin_meta(labels)
        if "axial_axis" in meta:
            return int(meta["axial_axis"])
        try:
            return int(layer_volume(self.image or labels).reorientation.axial_axis)
        except (CovidSegError, ValueError, KeyError):
            return 0

    def _update_info(self) -> None:
        if self.session is None:
            self.info.setText("Choose a lesion mask (Labels layer) to correct.")
            return
        meta = plugin_meta(self.session.layer)
        parts = [f"model: {meta.get('model_version', 'unknown')}"]
        if self.image is None:
            parts.append("no CT image: HU-limited paint, autosave and export are off")
        elif self.session.last_saved_at is not None:
            saved = _dt.datetime.fromtimestamp(self.session.last_saved_at).strftime("%H:%M:%S")
            parts.append(f"autosaved {saved}")
        self.info.setText(" · ".join(parts))

    def _fingerprint(self, image: Any) -> str:
        """Fingerprint of a CT layer's voxels and geometry (cached while its data is the same)."""
        cached = self._fingerprints.get(image)
        if cached is None or cached[0] != id(image.data):
            vol = layer_volume(image)
            cached = (id(image.data), fingerprint(vol.data, vol.affine))
            self._fingerprints[image] = cached
        return cached[1]

    # -- events --------------------------------------------------------------------------------
    def _on_session_change(self) -> None:
        self.lesion_panel.schedule_refresh()
        self.tools_panel.update_state()
        self._update_info()

    def _on_reviewed(self) -> None:
        if self.session is not None:
            self.session.touch()

    def _on_inserted(self, event: Any) -> None:
        self.offer_restore(event.value)

    def _on_removed(self, event: Any) -> None:
        if self.session is not None and event.value is self.session.layer:
            self._unbind()
            self._set_panels(None)
        elif event.value is self.image and self.session is not None:
            self.session.flush()

    def flush_autosave(self) -> None:
        """Write pending edits to the autosave now."""
        if self.session is not None:
            self.session.flush()

    def showEvent(self, event: Any) -> None:
        """Once docked and shown, save when napari's main window closes.

        (A dock widget gets no close event of its own when the window closes.)
        """
        window = self.window()
        if window is not self and self._watching is not window:
            window.installEventFilter(self)
            self._watching = window
        super().showEvent(event)

    def eventFilter(self, watched: Any, event: Any) -> bool:
        if event.type() == QEvent.Type.Close:
            self.flush_autosave()
        return False

    def closeEvent(self, event: Any) -> None:
        self._unbind()
        super().closeEvent(event)

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
        when = _dt.datetime.fromtimestamp(float(meta.get("saved_at", 0))).strftime("%Y-%m-%d %H:%M")
        if not self.confirm(
            "Restore autosaved lesion mask?",
            f"An autosaved lesion mask of '{layer.name}' from {when} exists "
            f"({int(np.count_nonzero(mask))} lesion voxels). Restore it? "
            "(No deletes the autosave.)",
        ):
            self.autosaves.discard(fp)
            return None
        return self._restore(layer, mask, meta, fp)

    def _restore(self, image: Any, mask: np.ndarray, meta: dict, fp: str) -> Any:
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
        geometry["metadata"][KEY] = info
        name = meta.get("layer_name") or f"{image.name} lesions"
        if name in self.viewer.layers:
            name = f"{name} (restored)"
        layer = self.viewer.add_labels(mask, name=name, opacity=0.6, **geometry)
        notify_info(f"Restored the autosaved lesion mask of '{image.name}' as '{layer.name}'.")
        self.labels_combo.set_layer(layer)
        self._bind(layer)
        return layer

    # -- export --------------------------------------------------------------------------------
    def _export_job(self, folder: str, case_id: str | None) -> ExportJob | None:
        labels = self.labels
        if labels is None or self.image is None:
            notify_error("Choose the lesion mask and the CT image it belongs to before exporting.")
            return None
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
        reviewed = self.review_panel.reviewed_slices() or None
        return ExportJob(
            folder=folder,
            image=layer_volume(self.image),
            mask=mask,
            case_id=case_id,
            reviewed_slices=reviewed,
            provenance=provenance,
        )
