"""``model.json``: reading, validating and writing model-version metadata (no torch).

A model version is a folder holding ``model.safetensors`` and ``model.json``::

    {
      "format": "napari-covid-seg-model/1",
      "name": "my-model",                 # store name (folder name in the store)
      "version": "20250101T120000Z",      # UTC timestamp unless given
      "created": "2025-01-01T12:00:00+00:00",
      "architecture": {...},              # ModelConfig.to_dict()
      "preprocessing": {...},             # see models.config.default_preprocessing()
      "provenance": {"parent": null, "data_fingerprint": null, "epochs": null,
                     "date": "...", "code_version": "0.1.0", ...},
      "metrics": {"val_dice": 0.81, ...}, # "val_dice" is the key listings show
      "license": "...",
      "description": "...",
      "weights": {"file": "model.safetensors", "sha256": "...", "bytes": 98312345,
                  "dtype": "float32"}
    }
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

FORMAT = "napari-covid-seg-model/1"
META_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"

#: Metric keys tried, in order, for the "val Dice" column of listings.
VAL_DICE_KEYS = ("val_dice", "best_val_dice", "dice", "val/dice")


def read_model_json(path: str | os.PathLike) -> dict[str, Any]:
    """The validated contents of a ``model.json`` (or of the one inside a folder).

    Raises ModelLoadError if it is missing, not JSON, or not this format.
    """
    path = Path(path)
    if path.is_dir():
        path = path / META_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelLoadError(
            f"{path} not found; a model version is a folder with {META_FILE} and {WEIGHTS_FILE}"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"Cannot read {path}: {err}") from err
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{path} is not valid JSON ({err}); the file is damaged") from err
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise ModelLoadError(
            f"{path} has format {fmt!r}, expected {FORMAT!r}; is this a napari-covid-seg model?"
        )
    if not isinstance(meta.get("architecture"), dict):
        raise ModelLoadError(f"{path} lacks the 'architecture' object")
    for key in ("preprocessing", "provenance", "metrics"):
        if not isinstance(meta.setdefault(key, {}), dict):
            raise ModelLoadError(f"{path}: {key!r} must be a JSON object")
    return meta


def brief(err: BaseException, limit: int = 400) -> str:
    """An exception message on one line, shortened for a user-facing error."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def val_dice(metrics: dict[str, Any]) -> float | None:
    """The validation Dice recorded in ``metrics`` (see :data:`VAL_DICE_KEYS`), if any."""
    for key in VAL_DICE_KEYS:
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def to_jsonable(obj: Any) -> Any:
    """``json.dumps`` default: numpy/torch scalars -> numbers, paths -> str, dates -> ISO."""
    if isinstance(obj, datetime.date | datetime.time):
        return obj.isoformat()
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return _finite(obj.item())
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def dumps(meta: dict[str, Any]) -> str:
    """Pretty, strict JSON (NaN/inf become null)."""
    return json.dumps(_clean(meta), indent=2, default=to_jsonable, allow_nan=False) + "\n"


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write ``meta`` to ``path`` via a temp file in the same folder and os.replace."""
    from ..io.atomic import atomic_write_text

    atomic_write_text(path, dumps(meta))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_weights(folder: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Path of the weights file of a version folder, checked against ``meta["weights"]``.

    Raises ModelLoadError if it is missing or its size/SHA-256 differ (truncated,
    corrupt or replaced).
    """
    folder = Path(folder)
    info = meta.get("weights") if isinstance(meta.get("weights"), dict) else {}
    name = str(info.get("file", WEIGHTS_FILE))
    if Path(name).name != name:
        raise ModelLoadError(f"{folder / META_FILE}: weights file name {name!r} is not allowed")
    path = folder / name
    if not path.is_file():
        raise ModelLoadError(f"Weights file {path} is missing; the model version is incomplete")
    size = info.get("bytes")
    if isinstance(size, int) and path.stat().st_size != size:
        raise ModelLoadError(
            f"{path} has {path.stat().st_size} bytes but {META_FILE} records {size}; "
            "the weights are truncated or were replaced"
        )
    digest = info.get("sha256")
    if isinstance(digest, str) and sha256_file(path) != digest:
        raise ModelLoadError(
            f"{path} does not match the SHA-256 recorded in {META_FILE}; "
            "the weights are corrupt or were replaced"
        )
    return path
