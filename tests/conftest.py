"""Shared fixtures: real-data location, isolated per-user folders."""

from __future__ import annotations

from pathlib import Path

import pytest

# torchvision imports torch._dynamo, which loads triton's bundled LLVM. Loaded
# after napari's OpenGL canvas has pulled in Mesa's libLLVM (Xvfb, llvmpipe),
# the two clash and the process segfaults; loaded first, both work. The plugin
# itself guards against this in napari (_widgets/_torch_guard.py).
import torchvision  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EXAMPLE_CT = SHARED_DATA / "ct-example" / "example_ct.nii.gz"
SEMISEG = SHARED_DATA / "covid-semiseg" / "train"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own model store / autosave folder."""
    home = tmp_path_factory.mktemp("covidseg_home")
    monkeypatch.setenv("NAPARI_COVID_SEG_HOME", str(home))
    return home


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not present at {path} (only on the project's machines)")
    return path
