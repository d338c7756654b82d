"""The lung mask in the Correct widget: see it, correct it, and the burden follows.

The Segment widget keeps the lung mask it computed (right = 1, left = 2) in
the lesion layer's ``metadata["covid_seg"]["lungs"]`` with its report
(``"lung_mask"``: used or skipped, and why). "Show lung mask" turns it into a
Labels layer ``"<CT> lungs"`` (role ``"lungs"``, the CT's geometry); "Correct
lung mask" makes that layer the one the widget edits, with the same tools, undo
and autosave; the "% of lungs" numbers use the edited lungs. A mask opened from
a file has no lung mask: "Compute lung mask" makes one from the CT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from magicgui.widgets import Container, Label, PushButton

from ._layers import KEY, LUNGS, geometry_kwargs, plugin_meta, wrap_labels

#: Right lung blue, left lung orange (label 1 and 2), everything else transparent.
LUNG_COLORS = {None: "transparent", 0: "transparent", 1: "#4fa3ff", 2: "#ffb347"}


def lungs_name(image: Any) -> str:
    return f"{image.name} lungs"


def stored_lungs(lesions: Any) -> np.ndarray | None:
    """The lung labels kept with a lesion layer (same shape), or None."""
    lungs = plugin_meta(lesions).get("lungs")
    if isinstance(lungs, np.ndarray) and lungs.shape == lesions.data.shape:
        return lungs
    return None


def report_text(report: Any) -> str:
    """One or two lines about the lung mask the Segment widget used."""
    if not isinstance(report, dict):
        return ""
    status = report.get("status")
    volumes = ""
    if report.get("right_ml") is not None and report.get("left_ml") is not None:
        volumes = f" (right {report['right_ml']:.0f} mL, left {report['left_ml']:.0f} mL)"
    if status == "ok":
        text = f"Lung mask used to restrict the lesions{volumes}."
    elif status == "skipped":
        text = f"Lung mask NOT used: {report.get('reason') or 'it looked wrong'}{volumes}."
    elif status == "off":
        text = f"Lesions were not restricted to the lungs{volumes}."
    elif status == "computed":
        text = f"Lung mask computed from the CT{volumes}."
    else:
        return ""
    notes = [str(n) for n in report.get("notes") or []]
    return text + (" " + " ".join(notes) if notes else "")


def add_lungs_layer(viewer: Any, image: Any, lungs: np.ndarray, source: Any = None) -> Any:
    """A Labels layer of ``lungs`` on ``image``'s geometry (the array is shared, not copied)."""
    from napari.utils.colormaps import DirectLabelColormap

    geometry = geometry_kwargs(image)
    geometry["metadata"][KEY] = {
        "role": LUNGS,
        "image_layer": image.name,
        "lesion_layer": None if source is None else source.name,
    }
    name = lungs_name(image)
    if name in viewer.layers:
        name = f"{name} (2)"
    return viewer.add_labels(
        lungs,
        name=name,
        opacity=0.35,
        colormap=DirectLabelColormap(color_dict=LUNG_COLORS),
        **geometry,
    )


class LungsPanel(Container):
    """Report, "Show lung mask", "Correct lung mask" / "Back to lesions", "Compute lung mask".

    A magicgui container. "Show lung mask" and "Correct lung mask" are toggle
    buttons: their ``value`` is the checked state, and ``clicked`` carries the
    state after the click. The Correct widget sets the ``on_*`` callables and
    calls :meth:`set_state`.
    """

    def __init__(self) -> None:
        super().__init__(labels=False)
        self.on_show: Callable[[bool], Any] | None = None
        self.on_edit: Callable[[bool], Any] | None = None
        self.on_compute: Callable[[], Any] | None = None
        self.report = Label(name="report", value="")
        self.show_button = PushButton(name="show_lungs", text="Show lung mask")
        self.show_button.tooltip = "Show the lung mask as a Labels layer: right = 1, left = 2"
        self.edit_button = PushButton(name="correct_lungs", text="Correct lung mask")
        self.edit_button.tooltip = (
            "Edit the lung mask with the brush and the tools (label 1 = right lung, "
            "2 = left lung, 0 erases); the % of lungs follows"
        )
        for button in (self.show_button, self.edit_button):
            button.native.setCheckable(True)  # (magicgui has no toggle-button widget)
        self.show_button.clicked.connect(
            lambda checked=None: self._call(self.on_show, self._state(self.show_button, checked))
        )
        self.edit_button.clicked.connect(
            lambda checked=None: self._call(self.on_edit, self._state(self.edit_button, checked))
        )
        self.compute_button = PushButton(name="compute_lungs", text="Compute lung mask")
        self.compute_button.tooltip = "Make a lung mask from the CT (a few seconds)"
        self.compute_button.clicked.connect(lambda *_: self._call(self.on_compute))
        self.hint = Label(
            name="hint",
            value="Paint 1 for the right lung, 2 for the left; the burden uses the edited lungs.",
        )
        wrap_labels(self.report, self.hint)
        # Two buttons a row: the dock may be ~350 px wide.
        toggles = Container(
            name="toggles",
            layout="horizontal",
            labels=False,
            widgets=[self.show_button, self.edit_button],
        )
        self.compute_row = Container(
            name="compute_row", layout="horizontal", labels=False, widgets=[self.compute_button]
        )
        self.compute_row.native.layout().addStretch(1)  # half the width, as a button of a pair
        for row in (toggles, self.compute_row):
            row.margins = (0, 0, 0, 0)
        self.extend([self.report, toggles, self.compute_row, self.hint])
        self.native.layout().addStretch(1)  # rows at the top, not spread over the page

    @staticmethod
    def _state(button: PushButton, checked: Any) -> bool:
        """The toggle's state after a click (``clicked`` carries it; else the button's value)."""
        return bool(button.value if checked is None else checked)

    @staticmethod
    def _call(fn: Callable[..., Any] | None, *args: Any) -> None:
        if fn is not None:
            fn(*args)

    def set_state(
        self, *, report: str, has_lungs: bool, shown: bool, editing: bool, busy: bool = False
    ) -> None:
        """Update texts and buttons."""
        if not has_lungs and not report:
            report = "No lung mask for this lesion mask yet: compute one from the CT."
        elif not has_lungs:
            report += " (not kept with this mask: compute it again to see it)"
        self.report.value = report
        for button, checked in ((self.show_button, shown), (self.edit_button, editing)):
            with button.changed.blocked():
                button.value = checked
        self.show_button.enabled = has_lungs and not busy
        self.edit_button.enabled = has_lungs and not busy
        self.edit_button.text = "Back to lesions" if editing else "Correct lung mask"
        self.compute_row.visible = self.compute_button.visible = not has_lungs
        self.compute_button.enabled = not busy
        self.compute_button.text = "Computing..." if busy else "Compute lung mask"
        self.hint.visible = has_lungs
