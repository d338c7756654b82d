"""GUI tests run in a real napari under Xvfb (``xvfb-run -a pytest``)."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _require_display():
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        pytest.fail("GUI tests need a display: run the suite as `xvfb-run -a pytest` (see README)")
