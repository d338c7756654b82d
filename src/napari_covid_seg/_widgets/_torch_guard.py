"""Import torch safely inside a running napari.

On Linux with Mesa's software OpenGL (llvmpipe/swrast: VMs, remote desktops,
Xvfb), napari's canvas loads ``libLLVM``. Importing ``triton`` afterwards
(torch imports it via ``torch._dynamo`` when torchvision is imported) loads a
second, incompatible LLVM and the process crashes with a segmentation fault.
:func:`prepare_torch` hides triton from torch in exactly that situation
(``torch.compile`` for GPUs then cannot run in this process; plain inference
and training are unaffected) and imports torch and torchvision once, on the GUI
thread, before any worker thread needs them.

napari plus torch hold millions of Python objects, so a full (generation 2)
garbage collection pauses every thread, the GUI included, for a few hundred
milliseconds. :func:`freeze_startup_objects` moves the objects that exist once
everything is imported into the collector's permanent generation (``gc.freeze``),
so later collections scan only new objects. It is a process-wide setting, so
only an application entry point calls it (the demo does, before it opens a
viewer); the widgets do not.
"""

from __future__ import annotations

import gc
import sys


def mesa_llvm_loaded() -> bool:
    """Whether this process has already mapped an LLVM shared library (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="ignore") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:
        return False


def prepare_torch() -> None:
    """Make ``import torch, torchvision`` safe in napari and do it now (idempotent)."""
    if "torchvision" in sys.modules:
        return
    if "triton" not in sys.modules and mesa_llvm_loaded():
        sys.modules["triton"] = None  # type: ignore[assignment]  # ImportError for torch
    import torch  # noqa: F401
    import torchvision  # noqa: F401


def freeze_startup_objects() -> None:
    """Collect garbage once, then exclude all existing objects from future GC scans.

    Idempotent: does nothing when objects are already frozen (by us or the host).
    """
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()
