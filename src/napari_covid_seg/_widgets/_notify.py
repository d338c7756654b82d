"""One clear napari notification per user-facing problem, and yes/no questions.

Widgets never raise at the user: every error becomes exactly one call to
:func:`notify_error` with a message that says what to do. Questions go
through a ``confirm(title, text) -> bool`` callable that tests replace.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import CovidSegError

Confirm = Callable[[str, str], bool]


def notify_error(message: str) -> None:
    """Show ``message`` as one napari error notification."""
    from napari.utils.notifications import show_error

    show_error(message)


def notify_warning(message: str) -> None:
    """Show ``message`` as one napari warning notification."""
    from napari.utils.notifications import show_warning

    show_warning(message)


def notify_info(message: str) -> None:
    """Show ``message`` as one napari info notification."""
    from napari.utils.notifications import show_info

    show_info(message)


def describe_error(err: BaseException, doing: str) -> str:
    """A one-line user message for ``err`` raised while ``doing`` (e.g. "Segmentation")."""
    if isinstance(err, CovidSegError):
        return f"{doing} failed: {err}"
    if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
        return (
            f"{doing} ran out of memory. Choose a smaller batch size, the CPU device, "
            "or close other programs, then run again."
        )
    return f"{doing} failed unexpectedly ({type(err).__name__}: {err})"


def ask_yes_no(parent: object, title: str, text: str) -> bool:
    """A modal Yes/No question (default No); True for Yes."""
    from qtpy.QtWidgets import QMessageBox

    buttons = QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
    answer = QMessageBox.question(parent, title, text, buttons, QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes
