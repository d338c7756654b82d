"""Layer helpers shared by the widgets: geometry, roles, layer pickers, navigation.

Every layer the plugin makes from a CT image carries the image's ``scale``,
``translate``, ``affine`` and ``units`` and a copy of its ``metadata["nifti"]``
(so the npe2 writer saves a mask with the image's exact geometry). Plugin
layers also carry ``metadata["covid_seg"]`` with at least a ``"role"``
(``"lesions"``, ``"lungs"``, ``"probability"``, ``"uncertainty"``, ``"attention"``)
and the ``"image_layer"`` they were made from.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QWidget

from .._writer import volume_for_layer
from ..errors import InvalidImageError
from ..io import HU, WINDOWED, Volume, looks_windowed

KEY = "covid_seg"
LESIONS = "lesions"
LUNGS = "lungs"


def plugin_meta(layer: Any) -> dict:
    """``layer.metadata["covid_seg"]`` (created empty if missing)."""
    return layer.metadata.setdefault(KEY, {})


def role(layer: Any) -> str | None:
    """The plugin role of a layer, or None for layers the plugin did not make."""
    meta = layer.metadata.get(KEY) if isinstance(layer.metadata, dict) else None
    return meta.get("role") if isinstance(meta, dict) else None


def is_ct_image(layer: Any) -> bool:
    """A plain 2D/3D intensity Image layer (not RGB, not multiscale, not a plugin output)."""
    from napari.layers import Image

    return (
        isinstance(layer, Image)
        and not layer.rgb
        and not layer.multiscale
        and layer.ndim in (2, 3)
        and role(layer) is None
    )


def is_labels(layer: Any) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels) and not layer.multiscale and layer.ndim in (2, 3)


def layer_volume(layer: Any) -> Volume:
    """The layer's voxels with their geometry (NIfTI metadata, else scale/translate/affine).

    A 2D layer becomes a ``(1, y, x)`` Volume. Images without NIfTI metadata get
    their intensity kind from their values (0..255 = already lung-windowed).
    """
    if layer.multiscale:
        raise InvalidImageError(f"layer {layer.name!r} is multiscale; open a single-scale CT")
    data = np.asarray(layer.data)
    meta = {
        "metadata": layer.metadata,
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "affine": np.asarray(layer.affine.affine_matrix),
    }
    vol = volume_for_layer(data, meta)
    if "nifti" not in layer.metadata and not vol.is_mask and data.dtype.kind in "iuf":
        from dataclasses import replace

        vol = replace(vol, intensity=WINDOWED if looks_windowed(vol.data) else HU)
    return vol


def geometry_kwargs(image: Any) -> dict:
    """Layer kwargs putting a new layer's voxels exactly on ``image``'s voxels."""
    kwargs: dict[str, Any] = {
        "scale": tuple(image.scale),
        "translate": tuple(image.translate),
        "affine": np.asarray(image.affine.affine_matrix).copy(),
        "units": tuple(str(u) for u in image.units),
        "metadata": {},
    }
    if "nifti" in image.metadata:
        kwargs["metadata"]["nifti"] = copy.deepcopy(image.metadata["nifti"])
    return kwargs


def find_image_for(viewer: Any, labels: Any) -> Any | None:
    """The CT Image layer a Labels layer belongs to (by name in its metadata, else by shape)."""
    wanted = (labels.metadata.get(KEY) or {}).get("image_layer")
    candidates = [layer for layer in viewer.layers if is_ct_image(layer)]
    for layer in candidates:
        if wanted is not None and layer.name == wanted and layer.data.shape == labels.data.shape:
            return layer
    same_shape = [layer for layer in candidates if layer.data.shape == labels.data.shape]
    return same_shape[-1] if same_shape else None


def find_partner(viewer: Any, layer: Any, wanted_role: str) -> Any | None:
    """The Labels layer of role ``wanted_role`` made for the same CT as ``layer`` (same shape)."""
    image = (layer.metadata.get(KEY) or {}).get("image_layer")
    for other in reversed(list(viewer.layers)):
        if (
            other is not layer
            and is_labels(other)
            and role(other) == wanted_role
            and other.data.shape == layer.data.shape
            and (other.metadata.get(KEY) or {}).get("image_layer") == image
        ):
            return other
    return None


def scrolled(widget: QWidget, min_height: int = 40, hint_height: int | None = None) -> Any:
    """``widget`` in a frameless vertical scroll area (docks stay usable on small screens).

    The area may shrink to ``min_height`` pixels, so that several docks fit one
    laptop screen; what does not fit scrolls (vertically: the area asks for the
    content's minimum width, so nothing is cut off at the right). With
    ``hint_height`` it asks for at most that height (a modest dock that leaves
    the height to the others).
    """
    from qtpy.QtCore import QSize, Qt
    from qtpy.QtWidgets import QFrame, QScrollArea

    class Area(QScrollArea):
        def sizeHint(self) -> QSize:
            hint = super().sizeHint()
            hint.setWidth(max(hint.width(), self._content_width()))
            if hint_height is None:
                return hint
            return QSize(hint.width(), min(hint.height(), hint_height))

        def minimumSizeHint(self) -> QSize:
            # Only vertical scrolling: ask for the content's full minimum width (and the
            # scroll bar's), so the dock is made wide enough instead of cutting rows off.
            hint = super().minimumSizeHint()
            return QSize(max(hint.width(), self._content_width()), hint.height())

        def _content_width(self) -> int:
            inner = self.widget()
            if inner is None:
                return 0
            bar = self.verticalScrollBar().sizeHint().width()
            return inner.minimumSizeHint().width() + bar + 2 * self.frameWidth()

    area = Area()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setMinimumHeight(min_height)
    return area


def current_index(viewer: Any, layer: Any) -> tuple[int, ...]:
    """Data index of ``layer`` under the viewer's current dims point (rounded, clipped)."""
    point = np.asarray(viewer.dims.point)[-layer.ndim :]
    index = np.round(np.asarray(layer.world_to_data(point), dtype=float)).astype(int)
    return tuple(int(np.clip(i, 0, n - 1)) for i, n in zip(index, layer.data.shape, strict=True))


def jump_to(viewer: Any, layer: Any, index: Sequence[float], axis: int | None = None) -> None:
    """Show data position ``index`` of ``layer``: slider(s) to it and the camera centred on it.

    Args:
        axis: a data axis that must be sliced (not displayed), e.g. the axial axis;
            the viewer's axis order is changed if it is displayed in 2D.
    """
    offset = viewer.dims.ndim - layer.ndim
    if axis is not None and viewer.dims.ndisplay == 2:
        world_axis = offset + axis
        if world_axis in viewer.dims.displayed:
            order = [a for a in viewer.dims.order if a != world_axis]
            viewer.dims.order = (world_axis, *order)
    world = np.asarray(layer.data_to_world(np.asarray(index, dtype=float)), dtype=float)
    full = np.asarray(viewer.dims.point, dtype=float)
    full[offset:] = world
    for ax in viewer.dims.not_displayed:
        viewer.dims.set_point(ax, full[ax])
    camera(viewer).center = tuple(full[list(viewer.dims.displayed)])


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, else ``viewer.camera``)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers that pass ``accept``, kept up to date.

    A newly inserted layer becomes the choice when ``prefer(layer)`` is True (default:
    any accepted layer) or nothing was chosen. ``current_layer()`` returns the
    chosen layer (or None).
    """

    def __init__(
        self,
        viewer: Any,
        accept: Callable[[Any], bool],
        parent: QWidget | None = None,
        prefer: Callable[[Any], bool] | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._accept = accept
        self._prefer = prefer or accept
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        self.refresh()

    def disconnect_viewer(self) -> None:
        for event in ("inserted", "removed", "moved"):
            getattr(self._viewer.layers.events, event).disconnect(self.refresh)

    def layers(self) -> list[Any]:
        return [layer for layer in self._viewer.layers if self._accept(layer)]

    def refresh(self, event: Any = None) -> None:
        """Rebuild the list, keeping the current choice when it still exists."""
        current = self.current_layer()
        inserted = getattr(event, "value", None) if event is not None else None
        layers = self.layers()
        self.blockSignals(True)
        self.clear()
        for layer in layers:
            self.addItem(layer.name, layer)
            layer.events.name.disconnect(self.refresh)
            layer.events.name.connect(self.refresh)
        self.blockSignals(False)
        is_insert = getattr(event, "type", "") == "inserted"
        if is_insert and inserted in layers and (self._prefer(inserted) or current is None):
            pick = inserted
        else:
            pick = current if current in layers else (layers[-1] if layers else None)
        self.blockSignals(True)
        self.set_layer(pick)
        self.blockSignals(False)
        if pick is not current:
            self.currentIndexChanged.emit(self.currentIndex())

    def current_layer(self) -> Any | None:
        index = self.currentIndex()
        return self.itemData(index) if index >= 0 else None

    def set_layer(self, layer: Any | None) -> None:
        for i in range(self.count()):
            if self.itemData(i) is layer:
                self.setCurrentIndex(i)
                return
        self.setCurrentIndex(-1)


# -- magicgui layer pickers ---------------------------------------------------------------------

#: The viewer events after which every layer picker reloads its choices (napari connects
#: the same ones when it docks a magicgui widget; connecting them here keeps undocked
#: widgets, and pickers in sub-containers, in sync too).
LAYER_LIST_EVENTS = ("inserted", "removed", "moved", "reordered", "renamed")


def layer_picker(
    viewer: Any,
    layer_type: type,
    accept: Callable[[Any], bool],
    *,
    name: str,
    label: str,
    tooltip: str = "",
) -> Any:
    """A magicgui combo box for ``layer_type`` layers of ``viewer`` that pass ``accept``.

    Made from the ``napari.layers.Image`` / ``Labels`` annotation (the widget napari
    itself gives such a parameter), with its choices narrowed to ``accept``-ed
    layers of this viewer (napari's default finds the viewer through the dock, so
    it is empty in a widget that is not docked). Its ``value`` is the chosen layer
    (None when there is none); :func:`follow_layers` keeps the choices current.
    """
    from magicgui.widgets import create_widget

    combo = create_widget(annotation=layer_type, name=name, label=label)
    combo.tooltip = tooltip or None
    combo.choices = lambda _widget: [
        (layer.name, layer) for layer in viewer.layers if accept(layer)
    ]
    combo.reset_choices = partial(_reset_in_order, combo)
    return combo


def _reset_in_order(combo: Any, *_: Any) -> None:
    """Reload ``combo``'s choices in the layer list's order, keeping its value if it stays.

    (magicgui keeps the items it already has and appends new names, so a renamed
    layer would move to the end; ``changed`` is emitted only when the value changes.)
    """
    from magicgui.widgets import ComboBox

    keep = combo.value
    with combo.changed.blocked():
        combo.native.clear()
        ComboBox.reset_choices(combo)
        if keep is not None and keep in combo.choices:
            combo.value = keep
    if combo.value is not keep:
        combo.changed.emit(combo.value)


def follow_layers(viewer: Any, callback: Callable[..., Any]) -> None:
    """Call ``callback(event)`` after layers are added, removed, moved or renamed."""
    for event in LAYER_LIST_EVENTS:
        emitter = getattr(viewer.layers.events, event, None)
        if emitter is not None:
            emitter.connect(callback)


def unfollow_layers(viewer: Any, callback: Callable[..., Any]) -> None:
    for event in LAYER_LIST_EVENTS:
        emitter = getattr(viewer.layers.events, event, None)
        if emitter is not None:
            emitter.disconnect(callback)


def wrap_labels(*labels: Any) -> None:
    """Let magicgui ``Label`` widgets wrap long text (and keep it selectable)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy

    for label in labels:
        label.native.setWordWrap(True)
        label.native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # Take the row's whole width (a wrapped label otherwise keeps a narrow width of its
        # own choosing and grows tall: several lines more, docks that no longer fit).
        policy = QSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        policy.setHeightForWidth(True)
        label.native.setSizePolicy(policy)
