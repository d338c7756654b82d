"""Evaluate a model version on a labelled dataset (the ``evaluate`` command).

Each slice is predicted at the model's input size, the probabilities are
resized back to the slice's native size (bilinear), thresholded, and compared
with the native mask; metrics are pooled over all pixels and averaged per
slice (see :mod:`.metrics`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import SliceDataset, load_datasets
from .metrics import MetricAccumulator
from .trainer import resolve_device, use_bf16


@torch.no_grad()
def predict_slices(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 8,
    bf16: bool = False,
    in_channels: int = 3,
) -> np.ndarray:
    """Probabilities ``(N, S, S)`` float32 for slices ``(N, S, S)`` in [0, 1]."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[i : i + batch_size], dtype=np.float32))[:, None]
        x = x.to(device).expand(-1, in_channels, -1, -1).contiguous()
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else _null()
        with ctx:
            logits = model(x)
        out.append(torch.sigmoid(logits.float())[:, 0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), np.float32)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def evaluate_slices(
    model: torch.nn.Module,
    data: SliceDataset,
    *,
    threshold: float = 0.5,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    amp: str = "off",
    native: bool = True,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``data`` (native resolution where native masks are kept)."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model = model.to(dev)
    in_ch = int(getattr(getattr(model, "config", None), "in_channels", 3))
    probs = predict_slices(
        model,
        data.images,
        device=dev,
        batch_size=batch_size,
        bf16=use_bf16(amp, dev),
        in_channels=in_ch,
    )
    acc = MetricAccumulator()
    if native and data.native_masks is not None:
        for p, truth in zip(probs, data.native_masks, strict=True):
            t = torch.from_numpy(p)[None, None]
            up = F.interpolate(t, size=truth.shape, mode="bilinear", align_corners=False)[0, 0]
            acc.update((up.numpy() > threshold)[None], truth[None])
    else:
        acc.update(probs > threshold, data.masks)
    result = acc.compute()
    result["resolution"] = "native" if native and data.native_masks is not None else "input"
    return result


def evaluate_model(
    model: str | os.PathLike,
    data_dirs: Sequence[str | os.PathLike],
    *,
    rotate_k: int = 0,
    lesion_labels: Sequence[int] | None = None,
    device: str = "auto",
    threshold: float | None = None,
    batch_size: int = 8,
    amp: str = "off",
    store: Any = None,
) -> dict[str, Any]:
    """Load a model version (store name or path) and evaluate it on dataset folders."""
    from ..models.checkpoint import load_model_version
    from ..models.store import ModelStore

    store = store if store is not None else ModelStore()
    path = store.resolve(model)
    dev = resolve_device(device)
    mv = load_model_version(path, device=dev)
    size = int(mv.preprocessing.get("input_size", 256))
    data = load_datasets(
        list(data_dirs),
        input_size=size,
        rotate_k=rotate_k,
        lesion_labels=tuple(lesion_labels) if lesion_labels is not None else None,
        keep_native=True,
    )
    thr = float(threshold if threshold is not None else mv.preprocessing.get("threshold", 0.5))
    result = evaluate_slices(
        mv.model, data, threshold=thr, device=dev, batch_size=batch_size, amp=amp
    )
    result.update(
        {
            "model": mv.name,
            "model_path": str(path),
            "data": [os.fspath(d) for d in data_dirs],
            "threshold": thr,
        }
    )
    return result
