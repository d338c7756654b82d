"""Segmentation metrics from pixel confusion matrices (numpy; torch optional).

Definitions (the paper's Table 3, standard forms):

* Acc = (TP + TN) / (TP + TN + FP + FN)
* Pc (precision) = TP / (TP + FP)
* Sen (sensitivity, recall) = TP / (TP + FN)
* Sp (specificity) = TN / (TN + FP)
* F1 = Dice = 2 TP / (2 TP + FP + FN) = 2 Pc Sen / (Pc + Sen)
* IoU (Jaccard) = TP / (TP + FP + FN)

Two aggregations: *pooled* (one confusion matrix summed over all pixels of
all slices, as in the paper) and *per-slice mean* (each slice's metric, then
the mean). A ratio whose denominator is zero is defined as 1.0 when its
numerator's event cannot happen (e.g. Dice of an empty prediction on an empty
truth) and 0.0 otherwise, so an all-background slice predicted empty scores
Dice 1.

This module imports numpy only at import time; the ``*_torch`` helpers import
torch lazily, so inference and evaluation code can reuse it without torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Metric names in report order (Dice first: accuracy/specificity are
#: dominated by the background).
METRIC_NAMES: tuple[str, ...] = (
    "dice",
    "iou",
    "precision",
    "sensitivity",
    "specificity",
    "accuracy",
)

#: Paper column names for the metrics.
PAPER_COLUMNS: dict[str, str] = {
    "accuracy": "Acc",
    "precision": "Pc",
    "sensitivity": "Sen",
    "specificity": "Sp",
    "dice": "F1",
    "iou": "IoU",
}


def confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pixel confusion counts of two binary masks of the same shape.

    Args:
        pred, truth: boolean-like arrays (any shape; non-zero = lesion).
    Returns:
        int64 array ``[TP, FP, FN, TN]``.
    """
    p = np.asarray(pred).astype(bool, copy=False)
    t = np.asarray(truth).astype(bool, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    tn = int(p.size - tp - fp - fn)
    return np.array([tp, fp, fn, tn], dtype=np.int64)


def confusion_per_slice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Confusion counts per leading index.

    Args:
        pred, truth: ``(N, ...)`` boolean-like arrays.
    Returns:
        ``(N, 4)`` int64 ``[TP, FP, FN, TN]`` per item.
    """
    p = np.asarray(pred).astype(bool, copy=False)
    t = np.asarray(truth).astype(bool, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    n = p.shape[0]
    p = p.reshape(n, -1)
    t = t.reshape(n, -1)
    tp = np.count_nonzero(p & t, axis=1)
    fp = np.count_nonzero(p & ~t, axis=1)
    fn = np.count_nonzero(~p & t, axis=1)
    tn = p.shape[1] - tp - fp - fn
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return float(num) / float(den)
    return 1.0 if num == 0 else 0.0


def metrics_from_confusion(counts: Iterable[int] | np.ndarray) -> dict[str, float]:
    """The six metrics of one confusion matrix ``[TP, FP, FN, TN]``."""
    tp, fp, fn, tn = (float(c) for c in np.asarray(counts, dtype=np.int64).reshape(4))
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
    }


def summarize(per_slice_counts: np.ndarray) -> dict[str, float]:
    """Pooled and per-slice-mean metrics from ``(N, 4)`` confusion counts.

    Returns a flat dict: ``dice``, ``iou``, ... (pooled over all pixels) and
    ``dice_mean``, ``iou_mean``, ... (mean of per-slice values), plus
    ``n_slices`` and the pooled counts ``tp``, ``fp``, ``fn``, ``tn``.
    """
    counts = np.asarray(per_slice_counts, dtype=np.int64).reshape(-1, 4)
    out: dict[str, float] = {}
    pooled = counts.sum(axis=0)
    out.update(metrics_from_confusion(pooled))
    if len(counts):
        per = [metrics_from_confusion(c) for c in counts]
        for name in METRIC_NAMES:
            out[f"{name}_mean"] = float(np.mean([m[name] for m in per]))
    else:
        for name in METRIC_NAMES:
            out[f"{name}_mean"] = float("nan")
    out["n_slices"] = len(counts)
    for key, value in zip(("tp", "fp", "fn", "tn"), pooled, strict=True):
        out[key] = int(value)
    return out


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """All metrics for stacks of slices ``(N, H, W)`` (or one ``(H, W)`` slice)."""
    p = np.asarray(pred)
    t = np.asarray(truth)
    if p.ndim == 2:
        p, t = p[None], t[None]
    return summarize(confusion_per_slice(p, t))


@dataclass
class MetricAccumulator:
    """Collects per-slice confusion counts batch by batch (numpy or torch input)."""

    counts: list[np.ndarray] = field(default_factory=list)

    def update(self, pred: Any, truth: Any) -> None:
        """Add a batch: ``(N, ...)`` binary predictions and truth (numpy or torch)."""
        if hasattr(pred, "detach"):
            self.counts.append(confusion_per_slice_torch(pred, truth))
        else:
            self.counts.append(confusion_per_slice(pred, truth))

    def add_counts(self, counts: np.ndarray) -> None:
        """Add ``(N, 4)`` precomputed counts (e.g. gathered from other ranks)."""
        self.counts.append(np.asarray(counts, dtype=np.int64).reshape(-1, 4))

    @property
    def all_counts(self) -> np.ndarray:
        if not self.counts:
            return np.zeros((0, 4), dtype=np.int64)
        return np.concatenate(self.counts, axis=0)

    def compute(self) -> dict[str, float]:
        return summarize(self.all_counts)


def confusion_per_slice_torch(pred: Any, truth: Any) -> np.ndarray:
    """Torch version of :func:`confusion_per_slice` (counts on the tensors' device).

    Args:
        pred, truth: ``(N, ...)`` tensors; non-zero = lesion.
    Returns:
        ``(N, 4)`` int64 numpy array ``[TP, FP, FN, TN]``.
    """
    p = pred.detach().reshape(pred.shape[0], -1) != 0
    t = truth.detach().reshape(truth.shape[0], -1) != 0
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} differs from {tuple(t.shape)}")
    tp = (p & t).sum(dim=1)
    fp = (p & ~t).sum(dim=1)
    fn = (~p & t).sum(dim=1)
    tn = p.shape[1] - tp - fp - fn
    import torch

    return torch.stack([tp, fp, fn, tn], dim=1).cpu().numpy().astype(np.int64)


def format_table(rows: dict[str, dict[str, float]], columns: tuple[str, ...] | None = None) -> str:
    """A markdown table: one row per named result, metric columns (paper names)."""
    columns = columns or ("accuracy", "precision", "sensitivity", "specificity", "dice", "iou")
    head = "| Method | " + " | ".join(PAPER_COLUMNS.get(c, c) for c in columns) + " |"
    sep = "|---|" + "---|" * len(columns)
    lines = [head, sep]
    for name, m in rows.items():
        cells = []
        for c in columns:
            v = m.get(c)
            cells.append("n/a" if v is None or not np.isfinite(v) else f"{v:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
