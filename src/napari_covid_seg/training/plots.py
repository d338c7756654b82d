"""Training curves (loss and validation Dice per epoch) as a PNG (matplotlib, Agg)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_path


def plot_history(history: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Write a two-panel PNG: train/val loss and validation Dice/IoU per epoch."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    path = Path(path)
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.6), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h.get("train_loss") for h in history], label="train loss")
    if any(h.get("val_loss") is not None for h in history):
        ax1.plot(epochs, [h.get("val_loss") for h in history], label="validation loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    ax1.legend()
    for key, label in (
        ("val_dice", "Dice (pooled)"),
        ("val_dice_mean", "Dice (per-slice mean)"),
        ("val_iou", "IoU (pooled)"),
    ):
        if any(h.get(key) is not None for h in history):
            ax2.plot(epochs, [h.get(key) for h in history], label=label)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation")
    ax2.set_ylim(0, 1)
    ax2.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
