"""Inference: preprocessing, batched prediction over volumes, lung mask, quantification.

Public API (imported lazily; importing this package does not import torch)::

    from napari_covid_seg.inference import segment, iter_segment, load_predictor
    result = segment(volume, "default", device="auto", progress=cb, should_cancel=cb)
    write_mask(path, result.mask, like=result.volume)
    result.quantify().summary()      # "lesions 41.2 mL in 6 lesions, 3.1% of lungs (...)"

* :mod:`.engine`: :func:`segment`, :func:`iter_segment`, :class:`Predictor`,
  :class:`SegmentationResult`, :class:`Progress`.
* :mod:`.device`: device, precision and batch-size choice.
* :mod:`.lungs`: classical lung mask (right/left labels).
* :mod:`.postprocess`: lung restriction, thresholds.
* :mod:`.quantify`: :class:`Quantification` (mL, % of each lung, lesion count).
* :mod:`.uncertainty`: per-slice entropy score.
* :mod:`.preprocess`: HU windows (numpy only).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "segment": "engine",
    "iter_segment": "engine",
    "load_predictor": "engine",
    "Predictor": "engine",
    "Progress": "engine",
    "SegmentationResult": "engine",
    "resolve_device": "device",
    "lung_mask": "lungs",
    "quantify": "quantify",
    "Quantification": "quantify",
    "slice_uncertainty": "uncertainty",
    "restrict_to_lungs": "postprocess",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
