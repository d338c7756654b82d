"""The model store: the bundled default plus user model versions, one folder each.

* Bundled versions: ``napari_covid_seg/bundled_models/<name>/`` (the default is
  ``bundled_models/default/``, the click model of Click to fix
  ``bundled_models/click/``); read-only, listed first, cannot be removed.
* User versions: ``<root>/<name>/`` with ``root`` = ``$NAPARI_COVID_SEG_HOME/models``
  if that variable is set, else the per-user data folder from platformdirs.

Listing reads only ``model.json`` files: this module does not import torch
(registering a loaded :class:`~.checkpoint.ModelVersion` or a legacy weights
file does, lazily).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from .metadata import (
    META_FILE,
    read_model_json,
    val_dice,
    verify_weights,
    write_json_atomic,
)

HOME_ENV = "NAPARI_COVID_SEG_HOME"
DEFAULT_NAME = "default"
#: The bundled click model (Click to fix; :mod:`..correction.clicks`).
CLICK_NAME = "click"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def bundled_models_dir() -> Path:
    """``napari_covid_seg/bundled_models`` inside the installed package."""
    return Path(__file__).resolve().parent.parent / "bundled_models"


def default_store_root() -> Path:
    """``$NAPARI_COVID_SEG_HOME/models``, else ``<user data dir>/models``."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser() / "models"
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-covid-seg", appauthor=False)) / "models"


@dataclass(frozen=True)
class ModelInfo:
    """One listed model version (from its ``model.json``; no weights are read)."""

    name: str
    path: Path
    bundled: bool
    version: str = ""
    parent: str | None = None
    created: str = ""
    architecture: str = ""
    description: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # set when model.json cannot be read

    @property
    def val_dice(self) -> float | None:
        """Validation Dice from ``metrics`` (``val_dice`` key), or None."""
        return val_dice(self.metrics)


class ModelStore:
    """Bundled and user model versions; see the module docstring for the layout."""

    def __init__(
        self, root: str | os.PathLike | None = None, bundled_dir: str | os.PathLike | None = None
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_store_root()
        self.bundled_dir = Path(bundled_dir) if bundled_dir is not None else bundled_models_dir()

    # -- listing ---------------------------------------------------------------------------

    def list(self) -> list[ModelInfo]:
        """Bundled versions first (``default`` leading), then user versions, newest first."""
        bundled = sorted(
            (_info(p, bundled=True) for p in _version_dirs(self.bundled_dir)),
            key=lambda i: (i.name != DEFAULT_NAME, i.name),
        )
        by_name = sorted((_info(p, bundled=False) for p in _version_dirs(self.root)), key=_name)
        user = sorted(by_name, key=lambda i: i.created, reverse=True)  # stable: ties by name
        return bundled + user

    def names(self) -> list[str]:
        """Names of all listed versions."""
        return [info.name for info in self.list()]

    def info(self, name: str) -> ModelInfo:
        """The :class:`ModelInfo` of a bundled or user version (ModelLoadError if unknown)."""
        path = self.resolve(name)
        return _info(path, bundled=self._is_bundled(path))

    def resolve(self, spec: str | os.PathLike) -> Path:
        """Folder (or file) of ``"default"``, a store name, or an existing path.

        A string that looks like a path (has a separator or a model file suffix)
        is taken as a path; otherwise bundled names win over user names, and an
        existing relative path is the last resort.
        """
        text = os.fspath(spec)
        looks_like_path = (
            isinstance(spec, os.PathLike)
            or os.sep in text
            or "/" in text
            or Path(text).suffix in (".json", ".safetensors", ".pt", ".pth", ".ckpt")
        )
        if looks_like_path:
            path = Path(text).expanduser()
            if not path.exists():
                raise ModelLoadError(f"No model at {path}")
            return path
        bundled = self.bundled_dir / text
        if _valid_name(text) and (bundled / META_FILE).is_file():
            return bundled
        if text == DEFAULT_NAME:
            raise ModelLoadError(
                "No bundled default model is installed; train one with "
                "`napari-covid-seg train` or pass --model PATH"
            )
        if text == CLICK_NAME and not (self.root / text / META_FILE).is_file():
            raise ModelLoadError(
                "No bundled click model is installed; train one with "
                "training/recipes/train_click_model.py or pass a click model's folder"
            )
        user = self.root / text
        if _valid_name(text) and (user / META_FILE).is_file():
            return user
        if Path(text).exists():
            return Path(text)
        known = ", ".join(self.names()) or "none"
        raise ModelLoadError(
            f"Unknown model {text!r}; known models: {known}. "
            "Pass a model folder path or see `napari-covid-seg models list`"
        )

    # -- changing ----------------------------------------------------------------------------

    def register(
        self, source: Any, name: str | None = None, *, overwrite: bool = False
    ) -> ModelInfo:
        """Copy a model version into the store and return its :class:`ModelInfo`.

        ``source``: a version folder (or its ``model.json``), a weights file
        (converted via :func:`~.checkpoint.load_model_version`), or a loaded
        :class:`~.checkpoint.ModelVersion`. ``name`` defaults to the version's
        name. An existing name gets a numeric suffix (``name-2``, ``name-3``...)
        unless ``overwrite=True``; bundled names are never shadowed.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".register.", suffix=".tmp", dir=self.root))
        try:
            staged = tmp / "version"
            default_name = self._stage(source, staged)
            meta = read_model_json(staged)
            verify_weights(staged, meta)
            final = self._target_name(name or default_name, overwrite)
            meta["name"] = final
            write_json_atomic(staged / META_FILE, meta)
            target = self.root / final
            aside = tmp / "old"
            if target.exists():  # overwrite=True
                os.replace(target, aside)
            try:
                os.replace(staged, target)
            except BaseException:
                if aside.exists():
                    os.replace(aside, target)
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return _info(target, bundled=False)

    def remove(self, name: str) -> None:
        """Delete a user version (the bundled ones cannot be removed)."""
        if _valid_name(name) and (self.bundled_dir / name / META_FILE).is_file():
            raise ModelLoadError(f"{name!r} is a bundled model and cannot be removed")
        target = self.root / name
        if not _valid_name(name) or not target.is_dir():
            if name == DEFAULT_NAME:
                raise ModelLoadError("No bundled default model is installed; nothing to remove")
            known = ", ".join(i.name for i in self.list() if not i.bundled) or "none"
            raise ModelLoadError(f"No user model named {name!r}; user models: {known}")
        aside = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".removing", dir=self.root))
        os.replace(target, aside / name)
        shutil.rmtree(aside, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------

    def _is_bundled(self, path: Path) -> bool:
        try:
            return path.resolve().parent == self.bundled_dir.resolve()
        except OSError:
            return False

    def _stage(self, source: Any, staged: Path) -> str:
        """Write ``source`` as a version folder at ``staged``; return its default name."""
        if hasattr(source, "model") and hasattr(source, "config"):  # a ModelVersion
            from .checkpoint import save_model_version

            save_model_version(
                staged,
                source.model,
                preprocessing=source.preprocessing,
                provenance=source.provenance,
                metrics=source.metrics,
                name=source.name or None,
                description=source.description,
                version=source.version or None,
                license=source.license or "unspecified",
                config=source.config,
            )
            return source.name or "model"
        path = Path(source).expanduser()
        if path.is_file() and path.name == META_FILE:
            path = path.parent
        if path.is_dir():
            meta = read_model_json(path)
            shutil.copytree(path, staged, ignore=shutil.ignore_patterns(".*"))
            return str(meta.get("name") or path.name)
        if path.is_file():
            from .checkpoint import load_model_version

            return self._stage(load_model_version(path), staged)
        raise ModelLoadError(f"No model at {path}")

    def _target_name(self, name: str, overwrite: bool) -> str:
        base = _sanitize(name)
        reserved = {p.name for p in _version_dirs(self.bundled_dir)} | {DEFAULT_NAME}
        if overwrite and base not in reserved:
            return base
        candidate, n = base, 1
        while candidate in reserved or (self.root / candidate).exists():
            n += 1
            candidate = f"{base}-{n}"
        return candidate


def _name(info: ModelInfo) -> str:
    return info.name


def _valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


def _sanitize(name: str) -> str:
    """A safe folder name: letters, digits, ``.``, ``_``, ``-``; no leading dot."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip(".-_")[:100]
    return cleaned or "model"


def _version_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / META_FILE).is_file()
    ]


def _info(path: Path, bundled: bool) -> ModelInfo:
    try:
        meta = read_model_json(path)
    except ModelLoadError as err:
        return ModelInfo(name=path.name, path=path, bundled=bundled, error=str(err))
    prov = meta.get("provenance") or {}
    arch = meta.get("architecture") or {}
    parent = prov.get("parent")
    return ModelInfo(
        name=path.name,
        path=path,
        bundled=bundled,
        version=str(meta.get("version") or ""),
        parent=None if parent is None else str(parent),
        created=str(meta.get("created") or prov.get("date") or ""),
        architecture=str(arch.get("name", "")),
        description=str(meta.get("description") or ""),
        metrics=dict(meta.get("metrics") or {}),
    )
