"""I/O: NIfTI, DICOM series and 2D images in, masks and datasets out; :class:`Volume`.

Imports numpy and nibabel only (never torch, never Qt); pydicom and highdicom
are imported inside the DICOM functions that need them.
"""

from .dicom import is_dicom_path, list_dicom_series, read_dicom, read_dicom_seg
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
    "is_dicom_path",
    "is_nifti_path",
    "list_dicom_series",
    "looks_like_labels",
    "looks_windowed",
    "name_says_mask",
    "read_dicom",
    "read_dicom_seg",
    "read_volume",
    "stem",
    "write_mask",
    "write_volume",
]
