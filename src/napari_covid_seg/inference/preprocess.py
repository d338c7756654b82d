"""Intensity preprocessing shared by inference and training (numpy only).

The model sees each axial slice as the lung window W1500/L-600 (HU -1350..150)
scaled to [0, 1] and replicated to ``n_channels`` channels. A slice already
windowed to 0..255 (public COVID sets, the shared JPEG slices) maps as
``v / 255``, which is the same thing because ``HU = -1350 + v * 1500 / 255``.
"""

from __future__ import annotations

from copy import deepcopy

import numpy as np

LUNG_WINDOW = (-1350.0, 150.0)  # W1500 / L-600
MEDIASTINAL_WINDOW = (-125.0, 225.0)  # W350 / L50

DEFAULT_PREPROCESSING: dict = {
    "input_size": 256,
    "window": list(LUNG_WINDOW),
    "channels": "replicate",
    "n_channels": 3,
    "threshold": 0.5,
    "orientation": "SPL",
}


def default_preprocessing() -> dict:
    """A fresh copy of the default preprocessing spec stored in model.json."""
    return deepcopy(DEFAULT_PREPROCESSING)


def normalize(
    slices: np.ndarray, *, intensity: str = "hu", window: tuple[float, float] = LUNG_WINDOW
) -> np.ndarray:
    """Intensities -> float32 in [0, 1].

    Args:
        slices: any shape; HU values (``intensity="hu"``) or 0..255 values
            (``intensity="windowed_0_255"``).
        window: (low, high) HU of the window.
    """
    x = np.asarray(slices, dtype=np.float32)
    if intensity == "hu":
        lo, hi = float(window[0]), float(window[1])
        x = (x - lo) * np.float32(1.0 / (hi - lo))
    else:
        x = x * np.float32(1.0 / 255.0)
    return np.clip(x, 0.0, 1.0, out=x)


def to_channels(x: np.ndarray, n_channels: int = 3) -> np.ndarray:
    """(N, H, W) in [0, 1] -> (N, C, H, W) by replicating the one window."""
    return np.repeat(x[:, None], n_channels, axis=1)


def intensity_affine(
    intensity: str = "hu", window: tuple[float, float] | list[float] = LUNG_WINDOW
) -> tuple[float, float]:
    """``(offset, scale)`` such that ``normalize(v) == clip((v - offset) * scale, 0, 1)``.

    Lets batched inference apply the window on the device (one fused op)
    instead of building a float32 copy of the volume on the host.
    """
    if intensity == "hu":
        lo, hi = float(window[0]), float(window[1])
        if hi <= lo:
            raise ValueError(f"window must be (low, high) with low < high, got {window!r}")
        return lo, 1.0 / (hi - lo)
    return 0.0, 1.0 / 255.0


def model_input_size(preprocessing: dict) -> tuple[int, int] | None:
    """``(height, width)`` every slice is resized to, or None for native-size inference."""
    size = preprocessing.get("input_size", DEFAULT_PREPROCESSING["input_size"])
    if size is None:
        return None
    if isinstance(size, int | float):
        return int(size), int(size)
    h, w = (int(s) for s in size)
    return h, w


def slice_reorientation(volume):  # -> Reorientation
    """Transposes/flips presenting a Volume's axial slices as the model saw them (SPL).

    ``volume.reorientation``, except for a single 2D image whose affine is not
    axial (e.g. a coronal PNG): that plane is presented as stored.
    """
    from ..io.orientation import Reorientation

    r = volume.reorientation
    shape = volume.data.shape
    if shape[r.axial_axis] != 1 and 1 in shape:
        single = shape.index(1)
        rest = tuple(a for a in range(3) if a != single)
        return Reorientation((single, *rest), (False, False, False))
    return r
