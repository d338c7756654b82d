"""I/O: NIfTI and 2D images in, masks and datasets out; :class:`Volume` = data + geometry.

Imports numpy and nibabel only (never torch, never Qt).
"""

from .nifti import (
    is_nifti_path,
    looks_like_labels,
    looks_windowed,
    name_says_mask,
    read_volume,
    stem,
    write_mask,
    write_volume,
)
from .volume import HU, WINDOWED, Volume

__all__ = [
    "HU",
    "WINDOWED",
    "Volume",
    "is_nifti_path",
    "looks_like_labels",
    "looks_windowed",
    "name_says_mask",
    "read_volume",
    "stem",
    "write_mask",
    "write_volume",
]
