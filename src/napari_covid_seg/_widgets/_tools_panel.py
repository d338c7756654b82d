"""Segment-Editor-style tools of the Correct widget, each a button with its parameter.

Every tool runs as one undoable edit through the :class:`~._edit_session.EditSession`
and works on the label currently selected in the Labels layer (1 when the
eraser, label 0, is selected). Distances are in millimetres of the layer's
voxel spacing (``layer.scale``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
)

from .. import correction as C
from ..errors import CovidSegError
from ._notify import notify_error

#: Default HU window of "paint limited to HU": aerated lung with ground glass,
#: without air (< -900 HU) and without soft tissue and bone (> -100 HU).
DEFAULT_HU_RANGE = (-900.0, -100.0)


def _spin(value: float, low: float, high: float, step: float, suffix: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setDecimals(1)
    box.setValue(value)
    box.setSuffix(suffix)
    return box


class ToolsPanel(QGroupBox):
    """Buttons for islands, holes, smoothing, margins, interpolation; HU-limited paint; undo."""

    def __init__(self) -> None:
        super().__init__("Tools")
        self.session: Any = None
        self.intensity = "hu"
        self.axial_axis = 0
        self.on_edit: Callable[[str, int], None] | None = None
        grid = QGridLayout(self)

        self.island_size = _spin(10.0, 0.0, 1e6, 5.0, " mm³")
        self.islands_button = self._button("Remove islands", self.remove_islands)
        self._row(grid, 0, QLabel("smaller than"), self.island_size, self.islands_button)

        self.holes_per_slice = QCheckBox("per slice")
        self.holes_per_slice.setChecked(True)
        self.holes_button = self._button("Fill holes", self.fill_holes)
        self._row(grid, 1, QLabel(""), self.holes_per_slice, self.holes_button)

        self.smooth_method = QComboBox()
        self.smooth_method.addItems(["median", "closing", "opening"])
        self.smooth_radius = _spin(2.0, 0.1, 50.0, 0.5, " mm")
        self.smooth_button = self._button("Smooth", self.smooth)
        self._row(grid, 2, self.smooth_method, self.smooth_radius, self.smooth_button)

        self.margin = _spin(2.0, 0.1, 50.0, 0.5, " mm")
        self.grow_button = self._button("Grow", self.grow)
        self.shrink_button = self._button("Shrink", self.shrink)
        self._row(grid, 3, self.shrink_button, self.margin, self.grow_button)

        self.interpolate_button = self._button("Fill between slices", self.fill_between)
        self.interpolate_button.setToolTip(
            "Interpolate the lesion on empty axial slices between annotated slices"
        )
        grid.addWidget(self.interpolate_button, 4, 0, 1, 3)

        self.hu_limit = QCheckBox("Paint only HU")
        self.hu_limit.setToolTip(
            "Brush strokes label only voxels inside this HU range (erasing is never limited)"
        )
        self.hu_low = _spin(DEFAULT_HU_RANGE[0], -1100.0, 3000.0, 50.0, "")
        self.hu_high = _spin(DEFAULT_HU_RANGE[1], -1100.0, 3000.0, 50.0, "")
        self.hu_limit.toggled.connect(self._update_hu)
        self.hu_low.valueChanged.connect(self._update_hu)
        self.hu_high.valueChanged.connect(self._update_hu)
        self._row(grid, 5, self.hu_limit, self.hu_low, self.hu_high)

        self.undo_button = self._button("Undo (Ctrl+Z)", self.undo)
        self.redo_button = self._button("Redo (Ctrl+Shift+Z)", self.redo)
        self.history_label = QLabel("")
        self._row(grid, 6, self.undo_button, self.redo_button, self.history_label)

    @staticmethod
    def _button(text: str, slot: Callable[[], Any]) -> QPushButton:
        button = QPushButton(text)
        button.clicked.connect(lambda *_: slot())
        return button

    @staticmethod
    def _row(grid: QGridLayout, row: int, *widgets: Any) -> None:
        for col, widget in enumerate(widgets):
            grid.addWidget(widget, row, col)

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

    def _run(self, name: str, tool: Callable[[np.ndarray], np.ndarray]) -> int:
        if self.session is None:
            notify_error("Choose a lesion Labels layer first.")
            return 0
        try:
            changed = self.session.apply(tool)
        except (CovidSegError, ValueError) as err:
            notify_error(f"{name}: {err}")
            return 0
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

    def _update_hu(self, *_: Any) -> None:
        if self.session is None:
            return
        if not self.hu_limit.isChecked() or self.session.image is None:
            self.session.hu_range = None
            return
        from ..inference.lungs import hu_to_intensity

        low, high = sorted((self.hu_low.value(), self.hu_high.value()))
        kind = self.intensity
        self.session.hu_range = (hu_to_intensity(low, kind), hu_to_intensity(high, kind))

    # -- tools -------------------------------------------------------------------------------
    def remove_islands(self) -> int:
        return self._run(
            "Remove islands",
            partial(
                C.remove_small_islands,
                min_volume_mm3=self.island_size.value(),
                spacing=self.spacing,
                label=self.label,
            ),
        )

    def fill_holes(self) -> int:
        return self._run(
            "Fill holes",
            self._axial_first(
                C.fill_holes, label=self.label, per_slice=self.holes_per_slice.isChecked()
            ),
        )

    def smooth(self) -> int:
        return self._run(
            "Smooth",
            partial(
                C.smooth,
                radius_mm=self.smooth_radius.value(),
                spacing=self.spacing,
                method=self.smooth_method.currentText(),
                label=self.label,
            ),
        )

    def grow(self) -> int:
        return self._run(
            "Grow",
            partial(
                C.grow, distance_mm=self.margin.value(), spacing=self.spacing, label=self.label
            ),
        )

    def shrink(self) -> int:
        return self._run(
            "Shrink",
            partial(
                C.shrink, distance_mm=self.margin.value(), spacing=self.spacing, label=self.label
            ),
        )

    def fill_between(self) -> int:
        return self._run(
            "Fill between slices",
            self._axial_first(C.interpolate_all_gaps, label=self.label, spacing=self.spacing),
        )

    def undo(self) -> bool:
        done = bool(self.session is not None and self.session.undo())
        self.update_state()
        return done

    def redo(self) -> bool:
        done = bool(self.session is not None and self.session.redo())
        self.update_state()
        return done
