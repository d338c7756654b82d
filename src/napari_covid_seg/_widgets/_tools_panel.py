"""Segment-Editor-style tools of the Correct widget, each a button with its parameter.

Every tool runs as one undoable edit through the :class:`~._edit_session.EditSession`
and works on the label currently selected in the Labels layer (1 when the
eraser, label 0, is selected). Distances are in millimetres of the layer's
voxel spacing (``layer.scale``). Every tool says what it did in the panel's
status line, and a tool that changes nothing says why (e.g. "2 mm is less than
one 3 mm voxel") there and in a notification.

"Fill between slices" works on one lesion: the one the brush strokes since the
last fill touched (or the one selected in the lesion list), between the axial
slices those strokes were on (or the slice range set beside the button).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from magicgui.widgets import FloatSpinBox
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import correction as C
from ..correction._common import radius_in_voxels
from ..errors import CovidSegError
from ._notify import notify_error, notify_info

#: Default HU window of "paint limited to HU": aerated lung with ground glass,
#: without air (< -900 HU) and without soft tissue and bone (> -100 HU).
DEFAULT_HU_RANGE = (-900.0, -100.0)


@dataclass(frozen=True)
class Number:
    """A numeric tool parameter: default, limits, step and unit, declared once."""

    value: float
    min: float
    max: float
    step: float
    unit: str = ""
    decimals: int = 1
    tooltip: str = ""
    buttons: bool = True  # +/- buttons (off where the row is tight)


#: Every numeric parameter of the Tools tab (the spin boxes are made from these).
NUMBERS: dict[str, Number] = {
    "island_size": Number(
        10.0, 0.0, 1e5, 5.0, "mm³", tooltip="Remove islands: pieces smaller than this volume"
    ),
    "smooth_radius": Number(2.0, 0.1, 50.0, 0.5, "mm", tooltip="Smoothing ball radius"),
    "margin": Number(2.0, 0.1, 50.0, 0.5, "mm", tooltip="Grow / shrink margin"),
    "hu_low": Number(
        DEFAULT_HU_RANGE[0], -1100.0, 3000.0, 50.0, "HU", 0, "Paint only HU: lower bound", False
    ),
    "hu_high": Number(
        DEFAULT_HU_RANGE[1], -1100.0, 3000.0, 50.0, "HU", 0, "Paint only HU: upper bound", False
    ),
}


def _narrow(widget: Any) -> Any:
    """Let ``widget`` shrink below its text width (the dock may be narrow)."""
    widget.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    widget.setMinimumWidth(48)
    return widget


def number(name: str, prefix: str = "") -> FloatSpinBox:
    """The magicgui spin box of parameter ``name`` of :data:`NUMBERS` (unit as suffix)."""
    spec = NUMBERS[name]
    box = FloatSpinBox(name=name, value=spec.value, min=spec.min, max=spec.max, step=spec.step)
    box.native.setDecimals(spec.decimals)
    if spec.unit:
        box.native.setSuffix(f" {spec.unit}")
    if prefix:
        box.native.setPrefix(prefix)
    if not spec.buttons:
        box.native.setButtonSymbols(QAbstractSpinBox.ButtonSymbols.NoButtons)
    box.tooltip = spec.tooltip or None
    _narrow(box.native)
    return box


def _slice_spin() -> QSpinBox:
    """A slice index box (plain Qt: 'edited' at -1 needs QSpinBox's special value text)."""
    box = QSpinBox()
    box.setButtonSymbols(QSpinBox.ButtonSymbols.NoButtons)
    box.setRange(-1, 100_000)
    box.setSpecialValueText("edited")
    box.setValue(-1)
    box.setToolTip("Axial slice; 'edited' = the slices your brush strokes were on")
    return _narrow(box)


class ToolsPanel(QWidget):
    """Buttons for islands, holes, smoothing, margins, interpolation; HU-limited paint; undo."""

    def __init__(self) -> None:
        super().__init__()
        self.session: Any = None
        self.intensity = "hu"
        self.axial_axis = 0
        self.on_edit: Callable[[str, int], None] | None = None
        #: ``() -> flat indices`` of the lesion(s) selected in the lesion list (or None).
        self.selected_lesion: Callable[[], np.ndarray | None] | None = None
        # One row per tool, each as narrow as its own controls: the dock may be ~330 px wide.
        rows = QVBoxLayout(self)
        rows.setSpacing(4)

        self.island_size = number("island_size", prefix="< ")
        self.islands_button = self._button("Remove islands", self.remove_islands)
        self.islands_button.setToolTip("Delete connected pieces smaller than this volume")
        _row(rows, self.islands_button, self.island_size)

        self.holes_per_slice = QCheckBox("per slice")
        self.holes_per_slice.setChecked(True)
        self.holes_button = self._button("Fill holes", self.fill_holes)
        _row(rows, self.holes_button, self.holes_per_slice)

        self.smooth_method = QComboBox()
        self.smooth_method.addItems(["median", "closing", "opening"])
        self.smooth_radius = number("smooth_radius")
        self.smooth_button = self._button("Smooth", self.smooth)
        _row(rows, self.smooth_button, self.smooth_method, self.smooth_radius)

        self.margin = number("margin")
        self.grow_button = self._button("Grow", self.grow)
        self.shrink_button = self._button("Shrink", self.shrink)
        _row(rows, self.shrink_button, self.grow_button, self.margin)

        self.interpolate_button = self._button("Fill between slices", self.fill_between)
        self.interpolate_button.setToolTip(
            "Draw one lesion on two or more axial slices, then click: the slices in between "
            "get its interpolated shape. Only that lesion changes (the one your strokes "
            "touched, or the one selected in Lesions); set a range to choose the slices."
        )
        self.edited_label = QLabel("")
        self.edited_label.setToolTip("Axial slices your brush strokes were on since the last fill")
        _row(rows, self.interpolate_button, self.edited_label)
        self.fill_from = _slice_spin()
        self.fill_to = _slice_spin()
        _row(rows, QLabel("  slices"), self.fill_from, QLabel("to"), self.fill_to)

        self.hu_limit = QCheckBox("Paint only HU")
        self.hu_limit.setToolTip(
            "Brush strokes label only voxels inside this HU range (erasing is never limited)"
        )
        self.hu_low = number("hu_low")
        self.hu_high = number("hu_high")
        self.hu_limit.toggled.connect(self._update_hu)
        self.hu_low.changed.connect(self._update_hu)
        self.hu_high.changed.connect(self._update_hu)
        _row(rows, self.hu_limit, self.hu_low, self.hu_high)

        self.undo_button = self._button("Undo", self.undo)
        self.undo_button.setToolTip("Undo the last edit, brush strokes included (Ctrl+Z)")
        self.redo_button = self._button("Redo", self.redo)
        self.redo_button.setToolTip("Redo (Ctrl+Shift+Z or Ctrl+Y)")
        self.history_label = QLabel("")
        _row(rows, self.undo_button, self.redo_button, self.history_label)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        rows.addWidget(self.status)
        rows.addStretch(1)

    @staticmethod
    def _button(text: str, slot: Callable[[], Any]) -> QPushButton:
        button = QPushButton(text)
        button.clicked.connect(lambda *_: slot())
        return button

    def set_session(self, session: Any, intensity: str = "hu", axial_axis: int = 0) -> None:
        self.session = session
        self.intensity = intensity
        self.axial_axis = axial_axis
        self._update_hu()
        self.update_state()

    # -- helpers -----------------------------------------------------------------------------
    @property
    def label(self) -> int:
        """The label tools act on: the layer's selected label, 1 for the eraser."""
        if self.session is None:
            return 1
        return int(self.session.layer.selected_label) or 1

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.abs(self.session.layer.scale))

    def _axial_first(self, tool: Callable[..., np.ndarray], **kw: Any) -> Callable:
        """``tool`` for per-axial-slice operations on a mask whose axial axis may not be 0."""
        axis = self.axial_axis
        if "spacing" in kw:
            spacing = list(kw["spacing"])
            kw["spacing"] = (spacing.pop(axis), *spacing)

        def run(mask: np.ndarray) -> np.ndarray:
            return np.moveaxis(tool(np.moveaxis(mask, axis, 0), **kw), 0, axis)

        return run

    def _run(
        self,
        name: str,
        tool: Callable[[np.ndarray], np.ndarray],
        why_not: Callable[[], str] | None = None,
        done: str = "",
    ) -> int:
        """Run ``tool``; report what changed, or why nothing did (``why_not()``)."""
        if self.session is None:
            notify_error("Choose a lesion Labels layer first.")
            return 0
        try:
            changed = self.session.apply(tool)
        except (CovidSegError, ValueError) as err:
            self.status.setText(f"{name}: {err}")
            notify_error(f"{name}: {err}")
            return 0
        if changed:
            self.status.setText(f"{name}: {changed:,} voxels changed{done}.")
        else:
            reason = (why_not() if why_not is not None else "") or "the mask is already so"
            message = f"{name} changed nothing: {reason}"
            self.status.setText(message)
            notify_info(message)
        if self.on_edit is not None:
            self.on_edit(name, changed)
        self.update_state()
        return changed

    def update_state(self) -> None:
        history = self.session.history if self.session is not None else None
        self.undo_button.setEnabled(bool(history and history.can_undo))
        self.redo_button.setEnabled(bool(history and history.can_redo))
        n = len(history) if history else 0
        self.history_label.setText(f"{n} undo step{'' if n == 1 else 's'}" if history else "")
        zs = self.edited_slices()
        shown = ", ".join(str(z) for z in zs[:4]) + (" ..." if len(zs) > 4 else "")
        self.edited_label.setText(f"edited: {shown}" if zs else "")

    # -- why a tool changed nothing ------------------------------------------------------------
    def _missing_label(self) -> str:
        label = self.label
        if self.session is not None and not (self.session.data == label).any():
            return (
                f"label {label} has no voxels in '{self.session.layer.name}' (pick the label "
                "to work on in the layer controls)"
            )
        return ""

    def _below_voxel(self, mm: float, what: str) -> str:
        if not any(radius_in_voxels(mm, self.spacing)):
            smallest = min(self.spacing)
            return (
                f"{mm:g} mm is less than one {smallest:g} mm voxel, so there is nothing to "
                f"{what}; use at least {smallest:g} mm"
            )
        return ""

    def _why(self, *checks: Callable[[], str], fallback: str) -> Callable[[], str]:
        def reason() -> str:
            for check in checks:
                text = check()
                if text:
                    return text
            return fallback

        return reason

    def _update_hu(self, *_: Any) -> None:
        if self.session is None:
            return
        if not self.hu_limit.isChecked() or self.session.image is None:
            self.session.hu_range = None
            return
        from ..inference.lungs import hu_to_intensity

        low, high = sorted((self.hu_low.value, self.hu_high.value))
        kind = self.intensity
        self.session.hu_range = (hu_to_intensity(low, kind), hu_to_intensity(high, kind))

    # -- tools -------------------------------------------------------------------------------
    def remove_islands(self) -> int:
        size = self.island_size.value
        return self._run(
            "Remove islands",
            partial(
                C.remove_small_islands, min_volume_mm3=size, spacing=self.spacing, label=self.label
            ),
            self._why(
                self._missing_label,
                fallback=f"no connected piece of label {self.label} is smaller than {size:g} mm³",
            ),
        )

    def fill_holes(self) -> int:
        per_slice = self.holes_per_slice.isChecked()
        return self._run(
            "Fill holes",
            self._axial_first(C.fill_holes, label=self.label, per_slice=per_slice),
            self._why(
                self._missing_label,
                fallback=f"label {self.label} encloses no hole"
                + (" in any axial slice" if per_slice else " in 3D (try 'per slice')"),
            ),
        )

    def smooth(self) -> int:
        radius, method = self.smooth_radius.value, self.smooth_method.currentText()
        return self._run(
            "Smooth",
            partial(
                C.smooth,
                radius_mm=radius,
                spacing=self.spacing,
                method=method,
                label=self.label,
            ),
            self._why(
                self._missing_label,
                lambda: self._below_voxel(radius, "smooth"),
                fallback=f"the outline is already smooth at {radius:g} mm ({method})",
            ),
        )

    def grow(self) -> int:
        distance = self.margin.value
        return self._run(
            "Grow",
            partial(C.grow, distance_mm=distance, spacing=self.spacing, label=self.label),
            self._why(
                self._missing_label,
                lambda: self._below_voxel(distance, "grow"),
                fallback=f"every voxel within {distance:g} mm is already labelled",
            ),
            done=f" (grown by {distance:g} mm)",
        )

    def shrink(self) -> int:
        distance = self.margin.value
        return self._run(
            "Shrink",
            partial(C.shrink, distance_mm=distance, spacing=self.spacing, label=self.label),
            self._why(
                self._missing_label,
                lambda: self._below_voxel(distance, "shrink"),
                fallback=f"no voxel of label {self.label} lies within {distance:g} mm of its edge",
            ),
            done=f" (shrunk by {distance:g} mm)",
        )

    # -- fill between slices -------------------------------------------------------------------
    def edited_slices(self) -> list[int]:
        """Axial slices the brush strokes since the last fill were on."""
        if self.session is None:
            return []
        painted = self.session.painted()
        if painted.size == 0:
            return []
        z = np.unravel_index(painted, self.session.data.shape)[self.axial_axis]
        return [int(v) for v in np.unique(z)]

    def fill_between(self) -> int:
        """Interpolate one lesion between its key slices (see the module docstring)."""
        name = "Fill between slices"
        if self.session is None:
            notify_error("Choose a lesion Labels layer first.")
            return 0
        plan = self._fill_plan()
        if isinstance(plan, str):
            self.status.setText(f"{name}: {plan}")
            notify_info(f"{name}: {plan}")
            return 0
        keys, lesion = plan
        axis, label, spacing = self.axial_axis, self.label, list(self.spacing)
        spacing_first = (spacing.pop(axis), *spacing)

        def tool(mask: np.ndarray) -> np.ndarray:
            out = C.interpolate_lesion(
                np.moveaxis(mask, axis, 0),
                keys,
                np.moveaxis(lesion, axis, 0),
                label=label,
                spacing=spacing_first,
            )
            return np.moveaxis(out, 0, axis)

        gaps = [f"{a + 1}-{b - 1}" for a, b in itertools.pairwise(keys) if b - a > 1]
        changed = self._run(
            name,
            tool,
            lambda: (
                "the slices between "
                + ", ".join(str(k) for k in keys)
                + (" already hold the interpolated lesion" if gaps else " are neighbours")
            ),
            done=f" on slices {', '.join(gaps)} between key slices "
            + ", ".join(str(k) for k in keys),
        )
        if changed:
            self.session.take_painted()
            self.update_state()
        return changed

    def _fill_plan(self) -> tuple[list[int], np.ndarray] | str:
        """``(key slices, lesion voxels)`` for fill-between, or why there is none."""
        mask = self.session.data
        label = self.label
        painted = self.session.painted()
        seeds = painted[np.take(mask, painted) == label] if painted.size else painted
        picked = self.selected_lesion() if self.selected_lesion is not None else None
        if picked is not None and picked.size:
            seeds = np.concatenate([seeds, picked[np.take(mask, picked) == label]])
        if seeds.size == 0:
            return (
                "select the lesion in the Lesions tab, or draw it with the brush on two or "
                "more axial slices first"
            )
        comps = C.label_components(mask, label=label, connectivity=mask.ndim)
        coords = np.unravel_index(seeds, mask.shape)
        local = tuple(c - s.start for c, s in zip(coords, comps.box, strict=True))
        ids = np.unique(comps.labels[local])
        lesion = np.zeros(mask.shape, bool)
        lesion[comps.box] = np.isin(comps.labels, ids[ids > 0])
        lo, hi = self.fill_from.value(), self.fill_to.value()
        if lo >= 0 and hi >= 0:
            keys = sorted({lo, hi})
        else:
            has = lesion.any(axis=tuple(a for a in range(mask.ndim) if a != self.axial_axis))
            keys = [z for z in self.edited_slices() if has[z]]
            if len(keys) < 2:
                where = f"slice {keys[0]}" if keys else "no slice of this lesion"
                return (
                    f"your strokes touched {where}; draw the lesion on at least two axial "
                    "slices, or set a slice range"
                )
        n = mask.shape[self.axial_axis]
        if keys[-1] >= n:
            return f"slice {keys[-1]} is outside 0..{n - 1}"
        return keys, lesion

    def undo(self) -> bool:
        done = bool(self.session is not None and self.session.undo())
        self.update_state()
        return done

    def redo(self) -> bool:
        done = bool(self.session is not None and self.session.redo())
        self.update_state()
        return done


def _row(rows: QVBoxLayout, *widgets: Any) -> None:
    """One tool row: its widgets (Qt, or magicgui's ``.native``) side by side, sharing the width."""
    row = QHBoxLayout()
    row.setSpacing(4)
    for widget in widgets:
        widget = getattr(widget, "native", widget)
        row.addWidget(widget, 0 if isinstance(widget, QLabel) else 1)
    rows.addLayout(row)
