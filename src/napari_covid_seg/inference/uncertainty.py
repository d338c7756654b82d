"""Per-slice uncertainty: mean binary entropy of the lesion probability.

The correction workflow sorts slices by this score so the user looks first
where the model hesitates. Entropy is in bits: 0 for p in {0, 1}, 1 at p = 0.5.
"""

from __future__ import annotations

import numpy as np


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """``-p log2 p - (1-p) log2 (1-p)`` elementwise (float32, 0 at p = 0 or 1)."""
    p = np.clip(np.asarray(p, dtype=np.float32), 1e-7, 1.0 - 1e-7)
    return -(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))


#: Entropy of every uint8 probability value v / 255.
_ENTROPY_LUT = binary_entropy(np.arange(256, dtype=np.float32) / 255.0).astype(np.float64)
_ENTROPY_LUT[0] = _ENTROPY_LUT[255] = 0.0


def slice_uncertainty(
    probability: np.ndarray, axial_axis: int = 0, region: np.ndarray | None = None
) -> np.ndarray:
    """Mean binary entropy per axial slice.

    Args:
        probability: ``(z, y, x)`` uint8 (0..255) or float (0..1) probabilities.
        axial_axis: the axis indexing the axial slices.
        region: optional mask of the same shape (e.g. the lungs); the mean is
            taken inside it, or over the whole slice where a slice has none of it.
    Returns:
        float32 ``(n_slices,)`` in [0, 1], indexed along ``axial_axis``.
    """
    prob = np.moveaxis(np.asarray(probability), axial_axis, 0)
    reg = None if region is None else np.moveaxis(np.asarray(region), axial_axis, 0)
    out = np.zeros(prob.shape[0], dtype=np.float32)
    for i in range(prob.shape[0]):
        p = prob[i]
        if reg is not None:
            inside = reg[i] > 0
            if inside.any():
                p = p[inside]
        if p.size == 0:
            continue
        if p.dtype == np.uint8:
            hist = np.bincount(p.ravel(), minlength=256)
            out[i] = float(hist @ _ENTROPY_LUT) / p.size
        else:
            out[i] = float(binary_entropy(p).mean())
    return out


def most_uncertain_slices(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """Slice indices sorted by decreasing uncertainty (the first ``k`` if given)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return order if k is None else order[:k]
