"""2D image slices (PNG, JPEG, TIFF) as numpy arrays.

Used for the 2D slice datasets (``images/<id>.jpg`` + ``masks/<id>.png``, the
layout of the public COVID-SemiSeg / MedSeg slices). Images are returned as
2D ``(y, x)`` arrays: grayscale as stored (0..255 for 8-bit files, already
lung-windowed), RGB converted to luminance. Imports numpy and Pillow only
(tifffile for TIFFs Pillow cannot read, where installed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InvalidImageError

#: File endings read as 2D slices (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def is_image2d_path(path: str | os.PathLike) -> bool:
    """True for names ending in one of :data:`IMAGE_SUFFIXES`."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _read_tiff(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError:  # pragma: no cover - tifffile ships with scikit-image deps
        raise InvalidImageError(f"{path}: cannot read this TIFF (install tifffile)") from None
    try:
        return np.asarray(tifffile.imread(str(path)))
    except Exception as e:  # tifffile raises many types for corrupt files
        raise InvalidImageError(f"{path} is not a readable TIFF: {e}") from None


def read_image2d(path: str | os.PathLike) -> np.ndarray:
    """Read one 2D image as a ``(y, x)`` array (uint8/uint16/float as stored).

    RGB(A) images become grayscale (ITU-R 601 luminance), a palette image its
    index values. Raises :class:`InvalidImageError` for missing, empty,
    corrupt or non-2D files.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InvalidImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InvalidImageError(f"{path} is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
                arr = np.asarray(im.convert("L"))
            elif im.mode == "P":
                arr = np.asarray(im)
            elif im.mode in ("I;16", "I;16B", "I;16L"):
                arr = np.asarray(im).astype(np.uint16)
            else:
                arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = _read_tiff(path)
        else:
            raise InvalidImageError(f"{path} is not a readable image: {e}") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        arr = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    arr = np.squeeze(arr)
    if arr.ndim != 2 or min(arr.shape) == 0:
        raise InvalidImageError(f"{path}: expected a 2D image, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def read_mask2d(path: str | os.PathLike) -> np.ndarray:
    """Read a 2D label image as an integer ``(y, x)`` array (values as stored)."""
    arr = read_image2d(path)
    if arr.dtype.kind == "f":
        if not np.array_equal(arr, np.round(arr)):
            raise InvalidImageError(f"{path}: a mask must hold integer labels")
        arr = arr.astype(np.int32)
    return arr
