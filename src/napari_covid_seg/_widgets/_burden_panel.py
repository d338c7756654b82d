"""Live lesion burden of the Correct widget: mL, count, % of each lung, GGO vs consolidation.

The numbers come from a :class:`~napari_covid_seg.correction.LiveBurden` that the
Correct widget feeds with every recorded edit of the lesion or lung layer, so
they follow each brush stroke without a pass over the volume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QGroupBox, QLabel, QVBoxLayout

from ..correction import LiveBurden
from ..inference.quantify import CONSOLIDATION_HU, Quantification, consolidation_threshold


class BurdenPanel(QGroupBox):
    """Shows the current burden; :meth:`set_sources` (re)builds the counts."""

    def __init__(self) -> None:
        super().__init__("Lesion burden (live)")
        self.burden: LiveBurden | None = None
        self.lung_note = ""
        self._key: tuple[int, ...] | None = None
        self.text = QLabel("No lesion mask")
        self.text.setWordWrap(True)
        self.text.setToolTip(
            "Lesion volume and count (26-connected), % of each lung from the lung mask "
            f"(Lungs tab), and lesion voxels below / at or above {CONSOLIDATION_HU:.0f} HU "
            "(ground glass / consolidation). Updated after every edit."
        )
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)
        layout.addWidget(self.text)

    def set_sources(
        self,
        lesions: np.ndarray | None,
        spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
        lungs: np.ndarray | None = None,
        image: np.ndarray | None = None,
        intensity: str = "hu",
        lung_note: str = "",
    ) -> None:
        """Count from these arrays (kept when they are the same arrays as before)."""
        self.lung_note = lung_note
        if lesions is None:
            self.burden, self._key = None, None
            self.update_text()
            return
        key = (id(lesions), id(lungs), id(image), *(float(s) for s in spacing))
        if key != self._key or self.burden is None:
            voxel_ml = float(np.prod(np.abs(spacing))) / 1000.0
            dense = consolidation_threshold(intensity) if image is not None else None
            self.burden = LiveBurden(lesions, voxel_ml, lungs=lungs, image=image, dense_from=dense)
            self._key = key
        self.update_text()

    def reset(self) -> None:
        """Recount everything (an array was replaced or edited behind the widget's back)."""
        if self.burden is not None:
            self.burden.reset()
        self.update_text()

    def lesions_changed(self, flat: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
        if self.burden is not None:
            self.burden.lesions_changed(flat, before, after)
            self.update_text()

    def lungs_changed(self, flat: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
        if self.burden is not None:
            self.burden.lungs_changed(flat, before, after)
            self.update_text()

    def quantification(self) -> Quantification | None:
        return self.burden.quantification() if self.burden is not None else None

    def update_text(self) -> None:
        q = self.quantification()
        self.text.setText("No lesion mask" if q is None else burden_html(q, self.lung_note))


def burden_html(q: Quantification, lung_note: str = "") -> str:
    """The panel's text: short lines that fit a narrow dock."""
    noun = "lesion" if q.n_lesions == 1 else "lesions"
    lines = [f"<b>{q.lesion_ml:.1f} mL</b> · <b>{q.n_lesions}</b> {noun}"]
    if q.percent_lungs is not None:
        lines[0] += f" · <b>{q.percent_lungs:.1f}%</b> of the lungs"
        lines.append(
            f"right {_pct(q.percent_right)} ({q.right_lesion_ml:.1f} mL) · "
            f"left {_pct(q.percent_left)} ({q.left_lesion_ml:.1f} mL)"
        )
    if q.ggo_ml is not None and q.consolidation_ml is not None:
        lines.append(f"ground glass {q.ggo_ml:.1f} mL · consolidation {q.consolidation_ml:.1f} mL")
    if lung_note:
        lines.append(f"<i>{lung_note}</i>")
    return "<br>".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def spacing_of(layer: Any) -> tuple[float, ...]:
    """Voxel size in mm of a 3D layer (its ``scale``)."""
    return tuple(float(s) for s in np.abs(layer.scale))
