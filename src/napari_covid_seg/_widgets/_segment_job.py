"""The segmentation job a widget runs in napari's ``thread_worker`` (no Qt, no napari).

:func:`run_segmentation` wraps :func:`napari_covid_seg.inference.engine.iter_segment`:
it yields the engine's ``Progress(done, total)`` after every batch and returns a
:class:`SegmentOutcome`. It never raises: a cancel or an error comes back in the
outcome, so the widget shows exactly one notification (napari's worker would
otherwise add a second one with a traceback). Everything heavy that the layers
need (voxel uncertainty map, quantification, review queue) is computed here, in
the worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CancelledError
from ..io import Volume


@dataclass
class SegmentRequest:
    """What to segment and how (mirrors the Segment widget's controls)."""

    volume: Volume
    model: str  # a path ModelStore.resolve accepts
    device: str = "auto"
    batch_size: int | str = "auto"
    threshold: float | None = None
    restrict_to_lungs: bool = True
    tta: bool | None = None  # None: automatic (on for noisy scans)
    uncertainty_map: bool = False
    attention: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class SegmentOutcome:
    """Result (or failure) of one run."""

    result: Any = None  # inference.engine.SegmentationResult
    cancelled: bool = False
    error: BaseException | None = None
    uncertainty_map: np.ndarray | None = None  # uint8 (z, y, x): binary entropy * 255
    quantification: Any = None  # inference.quantify.Quantification
    review: dict | None = None  # correction.ReviewQueue.to_dict()
    model_path: str = ""


def entropy_lut() -> np.ndarray:
    """uint8 LUT: probability byte ``v`` (p = v/255) -> binary entropy in bits * 255."""
    from ..inference.uncertainty import binary_entropy

    h = binary_entropy(np.arange(256, dtype=np.float32) / 255.0)
    lut = np.round(h * 255.0).astype(np.uint8)
    lut[0] = lut[255] = 0
    return lut


def review_state(result: Any) -> dict:
    """Review queue of the axial slices that hold lung or lesion, most uncertain first."""
    from ..correction import ReviewQueue

    axis = result.axial_axis
    n = result.mask.shape[axis]
    other = tuple(a for a in range(result.mask.ndim) if a != axis)
    include = result.mask.any(axis=other)
    if result.lungs is not None:
        include |= result.lungs.any(axis=other)
    if not include.any():
        include = np.ones(n, dtype=bool)
    scores = result.uncertainty if result.uncertainty is not None else np.zeros(n)
    return ReviewQueue(np.asarray(scores, dtype=np.float64), include=include).to_dict()


def run_segmentation(request: SegmentRequest) -> Generator[Any, None, SegmentOutcome]:
    """Yield engine progress; return a :class:`SegmentOutcome` (never raises)."""
    from ..inference.engine import iter_segment

    try:
        result = yield from iter_segment(
            request.volume,
            request.model,
            device=request.device,
            batch_size=request.batch_size,
            threshold=request.threshold,
            restrict_to_lungs=request.restrict_to_lungs,
            tta=request.tta,
            lungs=True,
            uncertainty=True,
            attention=2 if request.attention else False,
            should_cancel=request.cancel.is_set,
        )
        if request.cancel.is_set():
            raise CancelledError("segmentation cancelled")
        outcome = SegmentOutcome(result=result, model_path=str(request.model))
        outcome.quantification = result.quantify()
        outcome.review = review_state(result)
        if request.uncertainty_map:
            outcome.uncertainty_map = entropy_lut()[result.probability]
        return outcome
    except CancelledError:
        return SegmentOutcome(cancelled=True)
    except Exception as err:  # shown to the user as one notification
        return SegmentOutcome(error=err)
