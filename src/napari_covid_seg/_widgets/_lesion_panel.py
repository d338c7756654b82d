"""Lesion list of the Correct widget: connected components with volume and slice range.

Clicking a row moves the viewer to the lesion (slider on its centroid slice,
camera centred on it); "Delete" and "Keep only" edit the mask through the
:class:`~._edit_session.EditSession` (one undo step each). The components come
from the live burden's counter when it tracks this mask (no labelling of the
whole volume after each stroke), and the table is only rebuilt while it is shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..correction import (
    Components,
    Lesion,
    delete_component,
    keep_only,
    label_components,
    list_lesions,
)
from ._layers import jump_to
from ._notify import notify_info

#: 26-connectivity, like the lesion count of the quantification.
CONNECTIVITY = 3


class LesionPanel(QWidget):
    """Table of lesions of the target Labels layer."""

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self.session: Any = None
        self.axial_axis = 0
        self.lesions: list[Lesion] = []
        self._components: Any = None
        self._stale = False
        #: ``() -> Components`` of the current mask when someone keeps them (or None).
        self.components_source: Any = None
        #: ``() -> bool``: whether the table is on screen (else refreshes wait for it).
        self.is_shown: Any = lambda: True
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["#", "Volume (mL)", "Slices"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(60)
        self.table.cellClicked.connect(self.jump_to_row)
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip("Remove the selected lesions from the mask")
        self.delete_button.clicked.connect(self.delete_selected)
        self.keep_button = QPushButton("Keep only")
        self.keep_button.setToolTip("Remove every lesion except the selected ones")
        self.keep_button.clicked.connect(self.keep_selected)
        buttons = QHBoxLayout()
        buttons.addWidget(self.delete_button)
        buttons.addWidget(self.keep_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(250)
        self._debounce.timeout.connect(self.refresh)

    def set_session(self, session: Any, axial_axis: int = 0) -> None:
        self.session = session
        self.axial_axis = axial_axis
        self.refresh()

    def schedule_refresh(self) -> None:
        """Refresh soon (edits come in bursts while painting)."""
        self._debounce.start()

    def refresh_if_stale(self) -> None:
        """Rebuild the table if edits came in while it was not shown."""
        if self._stale:
            self.refresh(force=True)

    def _current_components(self, mask: Any) -> Components:
        comps = self.components_source() if self.components_source is not None else None
        if comps is None or comps.shape != mask.shape:
            comps = label_components(mask, connectivity=CONNECTIVITY)
        return comps

    def refresh(self, force: bool = False) -> None:
        """Recompute the connected lesions of the current mask and fill the table.

        While the panel is hidden (another tab is shown) this only marks the
        table stale; it is rebuilt when shown, or at once with ``force``.
        """
        self._debounce.stop()
        if not force and self.session is not None and not self.is_shown():
            self._stale = True
            return
        self._stale = False
        self.table.setRowCount(0)
        self.lesions, self._components = [], None
        if self.session is None:
            return
        layer = self.session.layer
        mask = layer.data
        self._components = self._current_components(mask)
        self.lesions = list_lesions(mask, np.abs(layer.scale), components=self._components)
        self.table.setRowCount(len(self.lesions))
        for row, lesion in enumerate(self.lesions):
            lo, hi = lesion.bbox[self.axial_axis].start, lesion.bbox[self.axial_axis].stop - 1
            for col, text in enumerate((str(row + 1), f"{lesion.volume_ml:.2f}", f"{lo}-{hi}")):
                self.table.setItem(row, col, QTableWidgetItem(text))

    def selected_rows(self) -> list[int]:
        return sorted({index.row() for index in self.table.selectionModel().selectedRows()})

    def jump_to_row(self, row: int, column: int = 0) -> None:
        """Move the viewer to lesion ``row``: its centroid slice, camera on its centre."""
        if self.session is None or not 0 <= row < len(self.lesions):
            return
        lesion = self.lesions[row]
        index = list(lesion.centroid_zyx)
        box = lesion.bbox[self.axial_axis]
        z = round(index[self.axial_axis])
        index[self.axial_axis] = float(np.clip(z, box.start, box.stop - 1))
        jump_to(self.viewer, self.session.layer, index, axis=self.axial_axis)

    def selected_voxels(self) -> np.ndarray | None:
        """Flat indices of the selected lesions' voxels (None when no row is selected)."""
        rows = self.selected_rows()
        if self.session is None or not rows or self._components is None:
            return None
        if self._debounce.isActive() or self._stale:
            return None  # the table is older than the mask
        comps = self._components
        ids = [self.lesions[r].index for r in rows]
        local = np.flatnonzero(np.isin(comps.labels, ids))
        coords = np.unravel_index(local, comps.labels.shape)
        full = tuple(c + s.start for c, s in zip(coords, comps.box, strict=True))
        return np.ravel_multi_index(full, comps.shape)

    def _edit(self, tool: Any) -> int:
        rows = self.selected_rows()
        if self.session is None:
            return 0
        if not rows:
            notify_info("Select one or more lesions in the list first.")
            return 0
        if self._debounce.isActive() or self._stale:  # the mask changed since the table was filled
            self.refresh(force=True)
            notify_info("The mask changed; the list is updated: select the lesions again.")
            return 0
        ids = [self.lesions[r].index for r in rows]
        comps = self._components
        changed = self.session.apply(lambda mask: tool(mask, comps, ids))
        self.refresh(force=True)
        return changed

    def delete_selected(self) -> int:
        """Delete the selected lesions (one undo step); voxels changed."""
        return self._edit(delete_component)

    def keep_selected(self) -> int:
        """Keep only the selected lesions (one undo step); voxels changed."""
        return self._edit(keep_only)
