"""The manifest's python_names import; torch and Qt stay out of the places they must."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "src" / "napari_covid_seg" / "napari.yaml"


def _python_names() -> list[str]:
    manifest = yaml.safe_load(MANIFEST.read_text())
    return [c["python_name"] for c in manifest["contributions"]["commands"]]


def test_every_python_name_in_the_manifest_imports():
    names = _python_names()
    assert len(names) >= 3
    for name in names:
        module, _, attr = name.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        assert callable(obj), name


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_plugin_discovery_does_not_import_torch():
    mods = _modules_after(
        "import napari_covid_seg, napari_covid_seg._reader, napari_covid_seg._writer, "
        "napari_covid_seg._sample_data, napari_covid_seg.cli\n"
        "import npe2; pm = npe2.PluginManager.instance(); pm.discover()\n"
        "assert 'napari-covid-seg' in pm._manifests"
    )
    assert "torch" not in mods
    assert "napari_covid_seg._reader" in mods


def test_core_never_imports_qt_or_napari():
    core = ["io", "models", "inference", "correction", "training"]
    present = [c for c in core if (MANIFEST.parent / c / "__init__.py").exists()]
    code = "\n".join(f"import napari_covid_seg.{c}" for c in present)
    code += "\nimport pkgutil, importlib, napari_covid_seg\n"
    code += "\n".join(
        f"for m in pkgutil.iter_modules(napari_covid_seg.{c}.__path__): "
        f"importlib.import_module('napari_covid_seg.{c}.' + m.name)"
        for c in present
    )
    mods = _modules_after(code)
    assert not {
        m
        for m in mods
        if m.split(".")[0] in {"qtpy", "PyQt6", "PyQt5", "PySide6", "magicgui", "napari", "vispy"}
    }
    assert f"napari_covid_seg.{present[0]}" in mods
