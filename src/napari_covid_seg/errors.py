"""User-facing errors.

Every error a user can cause (a bad file, a wrong shape, no GPU, out of memory)
is raised as a :class:`CovidSegError` subclass whose message says what went
wrong and how to fix it. The CLI prints ``str(err)`` and exits non-zero; the
widgets show it as one napari notification.
"""

from __future__ import annotations


class CovidSegError(Exception):
    """Base class of all errors meant to be shown to a user as one message."""


class InvalidImageError(CovidSegError, ValueError):
    """A file or array cannot be used as a CT image (corrupt, truncated, 4D...)."""


class GeometryMismatchError(CovidSegError, ValueError):
    """A mask does not match its image in shape or in affine."""


class ModelLoadError(CovidSegError, RuntimeError):
    """A model version or weights file cannot be loaded safely."""


class DatasetError(CovidSegError, ValueError):
    """A training dataset is empty, inconsistent or malformed."""


class DeviceError(CovidSegError, RuntimeError):
    """The requested compute device is not available."""


class OutOfMemoryError(DeviceError):
    """Out of memory even after backing off; the message says what to change."""


class CancelledError(CovidSegError):
    """A long operation was cancelled by the user; nothing was half-written."""
