"""Review queue: visit axial slices most-uncertain first and track which were checked.

::

    queue = ReviewQueue(slice_uncertainty(probability), include=has_lung)
    z = queue.next()                    # most uncertain slice not yet reviewed
    queue.mark_reviewed(z); z = queue.next(z)
    layer.metadata["review"] = queue.to_dict()
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def slice_uncertainty(
    probability: np.ndarray, region: np.ndarray | None = None, chunk: int = 16
) -> np.ndarray:
    """Per-slice uncertainty: sum of binary entropies (bits) of the voxel probabilities.

    Args:
        probability: lesion probabilities ``(z, y, x)`` in [0, 1].
        region: optional boolean ``(z, y, x)`` (e.g. the lungs); only voxels in it count.
        chunk: slices processed at a time (bounds temporary float memory).

    Returns:
        float64 ``(z,)``: 0 for a slice where every voxel is 0 or 1; grows with the
        number of voxels near 0.5 (one bit each at exactly 0.5).
    """
    probability = np.asarray(probability)
    if region is not None and np.shape(region) != probability.shape:
        raise ValueError("region must have the shape of probability")
    out = np.zeros(probability.shape[0], dtype=np.float64)
    for start in range(0, probability.shape[0], chunk):
        p = np.clip(probability[start : start + chunk].astype(np.float64), 0.0, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
        h = np.nan_to_num(h, nan=0.0)
        if region is not None:
            h *= np.asarray(region[start : start + chunk], dtype=bool)
        out[start : start + chunk] = h.reshape(h.shape[0], -1).sum(axis=1)
    return out


class ReviewQueue:
    """Axial slices ordered by uncertainty (descending; ties: lower slice first).

    Args:
        uncertainty_per_slice: ``(z,)`` one score per axial slice; higher = review first.
        reviewed: slice indices already reviewed (e.g. from an autosave).
        include: optional boolean ``(z,)``; only these slices are queued (e.g. slices
            with lesion or lung). Default: every slice.
    """

    def __init__(
        self,
        uncertainty_per_slice: np.ndarray,
        reviewed: Iterable[int] | None = None,
        include: np.ndarray | None = None,
    ) -> None:
        scores = np.asarray(uncertainty_per_slice, dtype=np.float64).ravel()
        if not np.all(np.isfinite(scores)):
            raise ValueError("uncertainty_per_slice must be finite")
        self.uncertainty = scores
        if include is not None:
            include = np.asarray(include, dtype=bool).ravel()
            if include.shape != scores.shape:
                raise ValueError("include needs one flag per slice, like uncertainty")
        self.include = include
        candidates = np.arange(scores.size) if include is None else np.flatnonzero(include)
        order = candidates[np.argsort(-scores[candidates], kind="stable")]
        self.order: tuple[int, ...] = tuple(int(z) for z in order)
        self._position = {z: i for i, z in enumerate(self.order)}
        self.reviewed: set[int] = set()
        for z in reviewed or ():
            self.mark_reviewed(z)

    def __len__(self) -> int:
        return len(self.order)

    def __contains__(self, z: object) -> bool:
        return z in self._position

    def mark_reviewed(self, z: int, reviewed: bool = True) -> None:
        """Mark slice ``z`` reviewed (or not, with ``reviewed=False``)."""
        z = int(z)
        if not 0 <= z < self.uncertainty.size:
            raise IndexError(f"slice {z} is outside 0..{self.uncertainty.size - 1}")
        if reviewed:
            self.reviewed.add(z)
        else:
            self.reviewed.discard(z)

    def is_reviewed(self, z: int) -> bool:
        return int(z) in self.reviewed

    def next(self, current: int | None = None) -> int | None:
        """The next unreviewed slice after ``current`` in queue order.

        Wraps around to earlier queue entries so that no unreviewed slice is
        skipped; starts at the head when ``current`` is None or not queued. None
        when every queued slice is reviewed.
        """
        start = self._position.get(int(current), -1) + 1 if current is not None else 0
        n = len(self.order)
        for step in range(n):
            z = self.order[(start + step) % n]
            if z not in self.reviewed:
                return z
        return None

    def previous(self, current: int | None) -> int | None:
        """The slice just before ``current`` in queue order (reviewed or not).

        None at the head of the queue or when ``current`` is not queued.
        """
        if current is None or int(current) not in self._position:
            return None
        position = self._position[int(current)]
        return self.order[position - 1] if position > 0 else None

    def progress(self) -> tuple[int, int]:
        """``(reviewed queued slices, queued slices)``."""
        done = sum(1 for z in self.reviewed if z in self._position)
        return done, len(self.order)

    def progress_text(self) -> str:
        """E.g. ``"12/87 reviewed"``."""
        done, total = self.progress()
        return f"{done}/{total} reviewed"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (for layer metadata or an autosave's meta)."""
        return {
            "uncertainty": [float(v) for v in self.uncertainty],
            "reviewed": sorted(self.reviewed),
            "include": None if self.include is None else [bool(v) for v in self.include],
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ReviewQueue:
        """Rebuild a queue saved with :meth:`to_dict`."""
        include = state.get("include")
        return cls(
            np.asarray(state["uncertainty"], dtype=np.float64),
            reviewed=state.get("reviewed") or (),
            include=None if include is None else np.asarray(include, dtype=bool),
        )
