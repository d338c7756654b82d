"""Model versions on disk: ``model.safetensors`` + ``model.json``, written atomically.

Nothing here unpickles arbitrary objects. Legacy ``.pt``/``.pth`` files are
read only with ``torch.load(..., weights_only=True)`` and must hold a tensor
state dict (plainly or under ``state_dict``/``model_state_dict``/``model``).
Their architecture comes from, in order: the ``config=`` argument, a sidecar
JSON next to the file (``weights.pt`` -> ``weights.json``, either a full
``model.json`` or just the architecture dict), or an ``architecture``/``config``
dict stored inside the checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import CovidSegError, DeviceError, ModelLoadError
from .config import ModelConfig, default_preprocessing
from .metadata import (
    FORMAT,
    META_FILE,
    WEIGHTS_FILE,
    brief,
    read_model_json,
    sha256_file,
    verify_weights,
    write_json_atomic,
)
from .pretrained import read_state_dict

LEGACY_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


class ModelExistsError(CovidSegError, FileExistsError):
    """The target folder of a model version already exists."""


@dataclass
class ModelVersion:
    """A loaded model version. ``model`` is in eval mode on the requested device."""

    model: nn.Module
    config: ModelConfig
    preprocessing: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    version: str = ""
    path: Path | None = None
    description: str = ""
    license: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def save_model_version(
    folder: str | os.PathLike,
    model: nn.Module,
    *,
    preprocessing: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    name: str | None = None,
    description: str = "",
    version: str | None = None,
    license: str = "unspecified",
    config: ModelConfig | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/model.json`` atomically; return ``folder``.

    Args:
        model: a model from :func:`build_model` (its ``.config`` is saved) or any
            module with ``config=`` given.
        preprocessing: defaults to :func:`default_preprocessing`.
        provenance: merged over ``{"parent": None, "data_fingerprint": None,
            "epochs": None, "date": <now, ISO>, "code_version": __version__}``.
        metrics: e.g. ``{"val_dice": 0.81}``.
        version: defaults to the UTC timestamp ``YYYYmmddTHHMMSSZ``.
        dtype: ``"float32"`` (bit-exact) or ``"float16"`` (half the size, for shipping).
        overwrite: replace an existing non-empty ``folder``; otherwise raise
            :class:`ModelExistsError`.

    Files are written into a temp folder next to ``folder`` and renamed into
    place, so a reader never sees a half-written version.
    """
    folder = Path(folder)
    cfg = config or getattr(model, "config", None)
    if not isinstance(cfg, ModelConfig):
        raise TypeError("model has no ModelConfig .config; pass config=")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if folder.exists() and not overwrite and (not folder.is_dir() or any(folder.iterdir())):
        raise ModelExistsError(
            f"{folder} already exists; choose another folder or pass overwrite=True"
        )
    state = _state_for_saving(model, dtype)
    now = _now()
    prov = {
        "parent": None,
        "data_fingerprint": None,
        "epochs": None,
        "date": now.isoformat(),
        "code_version": __version__,
        "torch_version": torch.__version__,
    }
    prov.update(provenance or {})
    meta: dict[str, Any] = {
        "format": FORMAT,
        "name": name or folder.name,
        "version": version or now.strftime("%Y%m%dT%H%M%SZ"),
        "created": prov["date"],
        "architecture": cfg.to_dict(),
        "preprocessing": dict(preprocessing) if preprocessing else default_preprocessing(),
        "provenance": prov,
        "metrics": dict(metrics or {}),
        "license": license,
        "description": description,
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        from safetensors.torch import save_file

        weights = tmp / WEIGHTS_FILE
        save_file(state, str(weights), metadata={"format": FORMAT, "name": meta["name"]})
        meta["weights"] = {
            "file": WEIGHTS_FILE,
            "sha256": sha256_file(weights),
            "bytes": weights.stat().st_size,
            "dtype": dtype,
        }
        write_json_atomic(tmp / META_FILE, meta)
        _move_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _state_for_saving(model: nn.Module, dtype: str) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu")
        if dtype == "float16" and t.is_floating_point():
            t = t.to(torch.float16)
        state[key] = t.contiguous().clone()
    return state


def _move_into_place(tmp: Path, folder: Path) -> None:
    """Rename the finished temp folder to ``folder``, replacing an old one if present."""
    if not folder.exists():
        os.replace(tmp, folder)
        return
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        os.replace(tmp, folder)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
    aside.rmdir()
    os.replace(folder, aside)
    try:
        os.replace(tmp, folder)
    except BaseException:
        os.replace(aside, folder)
        raise
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def load_model_version(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    config: ModelConfig | dict[str, Any] | str | None = None,
) -> ModelVersion:
    """Load a model version safely; the model is returned in eval mode on ``device``.

    ``path`` may be a version folder, its ``model.json``, a ``.safetensors`` file
    (with ``model.json`` beside it, a sidecar ``<stem>.json`` or ``config=``), or a
    legacy ``.pt``/``.pth`` state dict (see the module docstring). float16
    weights load into the float32 model. Raises ModelLoadError with a clear
    message for anything missing, damaged, mismatched or unsafe.
    """
    path = Path(path).expanduser()
    dev = _device(device)
    if not path.exists():
        raise ModelLoadError(f"No model at {path}")
    meta: dict[str, Any] | None = None
    if path.is_dir() or path.suffix == ".json":
        folder = path if path.is_dir() else path.parent
        meta = read_model_json(path)
        weights = verify_weights(folder, meta)
        state = read_state_dict(weights)
    elif (
        path.suffix == ".safetensors"
        and (path.parent / META_FILE).is_file()
        and (path.name == WEIGHTS_FILE)
    ):
        meta = read_model_json(path.parent)
        state = read_state_dict(verify_weights(path.parent, meta))
    elif path.suffix == ".safetensors":
        meta = _sidecar_meta(path)
        state = read_state_dict(path)
    elif path.suffix in LEGACY_SUFFIXES:
        meta = _sidecar_meta(path)
        state, embedded = _read_legacy(path)
        if meta is None and config is None and embedded is not None:
            config = embedded
    else:
        raise ModelLoadError(
            f"{path}: unsupported model file; use a model folder, model.json, "
            f".safetensors or a legacy {'/'.join(LEGACY_SUFFIXES)} state dict"
        )
    cfg = _resolve_config(path, meta, config)
    from .registry import build_model

    model = build_model(**{**cfg.to_dict(), "encoder_weights": "none"})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(
            f"The weights in {path} do not fit the {cfg.name} architecture {cfg.to_dict()}: "
            f"{brief(err)}"
        ) from err
    model.to(dev).eval()
    meta = meta or {}
    return ModelVersion(
        model=model,
        config=cfg,
        preprocessing=dict(meta.get("preprocessing") or default_preprocessing()),
        provenance=dict(meta.get("provenance") or {"source_file": str(path)}),
        metrics=dict(meta.get("metrics") or {}),
        name=str(meta.get("name") or (path.name if path.is_dir() else path.stem)),
        version=str(meta.get("version") or ""),
        path=path,
        description=str(meta.get("description") or ""),
        license=str(meta.get("license") or ""),
        meta=meta,
    )


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"Unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("CUDA was requested but no CUDA GPU is available; use device='cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("MPS was requested but is not available; use device='cpu'")
    return dev


def _sidecar_meta(path: Path) -> dict[str, Any] | None:
    """``model.json`` beside a weights file named model.*, or ``<stem>.json``."""
    candidates = [path.with_suffix(".json")]
    if path.stem == "model" or path.name == WEIGHTS_FILE:
        candidates.append(path.parent / META_FILE)
    for candidate in candidates:
        if candidate.is_file():
            try:
                raw = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ModelLoadError(f"{candidate} is not valid JSON: {err}") from err
            if isinstance(raw, dict) and "format" in raw:
                return read_model_json(candidate)
            if isinstance(raw, dict):
                return {"architecture": raw}
            raise ModelLoadError(f"{candidate} must hold a JSON object")
    return None


def _read_legacy(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """State dict of a legacy checkpoint (weights_only) and an embedded architecture dict."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelLoadError(
            f"{path}: napari-covid-seg refuses to unpickle this file: it holds objects other "
            f"than tensors and plain containers ({type(err).__name__}: {brief(err, 200)}). "
            "Only state dicts loadable with torch.load(weights_only=True) or safetensors "
            "files are accepted."
        ) from err
    embedded = None
    if isinstance(obj, dict):
        for key in ("architecture", "config", "model_config"):
            if isinstance(obj.get(key), dict):
                embedded = obj[key]
                break
    from .pretrained import extract_state_dict

    return extract_state_dict(obj, path), embedded


def _resolve_config(
    path: Path,
    meta: dict[str, Any] | None,
    config: ModelConfig | dict[str, Any] | str | None,
) -> ModelConfig:
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, str):
        config = {"name": config}
    raw = config if config is not None else (meta or {}).get("architecture")
    if raw is None:
        raise ModelLoadError(
            f"{path} holds weights but no architecture; put a JSON file "
            f'{path.with_suffix(".json").name} beside it (e.g. {{"name": "res_att_unet"}}) '
            "or pass config="
        )
    try:
        return ModelConfig.from_dict(dict(raw))
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{path}: invalid architecture {raw!r}: {err}") from err
