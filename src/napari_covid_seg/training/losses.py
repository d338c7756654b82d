"""Training losses on logits ``(N, 1, H, W)`` and binary targets of the same shape.

* ``bce``: ``BCEWithLogitsLoss`` (the paper's loss).
* ``dice``: soft Dice loss ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)``
  computed over the whole batch (batch Dice: stable when a slice has no lesion).
* ``dice_bce``: ``bce_weight * BCE + dice_weight * Dice``.

Losses are computed in float32 even under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOSS_NAMES: tuple[str, ...] = ("bce", "dice", "dice_bce")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Batch soft Dice loss; logits and target ``(N, 1, H, W)``; returns a scalar."""
    p = torch.sigmoid(logits.float())
    t = target.float()
    inter = (p * t).sum()
    den = p.sum() + t.sum()
    return 1.0 - (2.0 * inter + smooth) / (den + smooth)


class DiceBCELoss(nn.Module):
    """``bce_weight * BCEWithLogits + dice_weight * soft Dice`` (float32)."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.bce_weight:
            bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
            loss = loss + self.bce_weight * bce
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, self.smooth)
        return loss


def build_loss(name: str, **kwargs: float) -> nn.Module:
    """A loss module by name (see :data:`LOSS_NAMES`)."""
    key = str(name).strip().lower().replace("+", "_").replace("-", "_")
    if key in ("bce", "bcewithlogits", "bce_with_logits"):
        return DiceBCELoss(bce_weight=1.0, dice_weight=0.0)
    if key == "dice":
        return DiceBCELoss(bce_weight=0.0, dice_weight=1.0, smooth=kwargs.get("smooth", 1.0))
    if key in ("dice_bce", "bce_dice"):
        return DiceBCELoss(
            bce_weight=kwargs.get("bce_weight", 1.0),
            dice_weight=kwargs.get("dice_weight", 1.0),
            smooth=kwargs.get("smooth", 1.0),
        )
    raise ValueError(f"Unknown loss {name!r}; choose one of: {', '.join(LOSS_NAMES)}")
