"""The small building blocks shared by all four architectures.

Shapes are ``(N, C, H, W)``; every block keeps the spatial size unless it says
otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """3x3 conv (no bias) -> BatchNorm -> ReLU; ``(N, c_in, H, W) -> (N, c_out, H/s, W/s)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two :class:`ConvBNReLU`; the first may have stride 2 to halve H and W."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            ConvBNReLU(in_channels, out_channels, stride=stride),
            ConvBNReLU(out_channels, out_channels),
        )


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018), as written in the paper.

    For gating signal ``g`` (N, C_g, h, w) and skip features ``x`` (N, C_x, h, w)
    of the same spatial size::

        A     = W_g(g) + W_x(x)        # 1x1 convs (+BN) to C_int channels
        B     = psi(ReLU(A))           # 1x1 conv to one channel
        alpha = sigmoid(B)             # (N, 1, h, w), per-pixel weight in (0, 1)
        out   = x * alpha              # (N, C_x, h, w), what the decoder concatenates

    ``C_int`` defaults to ``C_x // 2`` (Oktay's choice).
    """

    def __init__(
        self,
        gate_channels: int,
        skip_channels: int,
        inter_channels: int | None = None,
        coarse: bool = False,
    ) -> None:
        super().__init__()
        inter = inter_channels or max(1, skip_channels // 2)
        self.coarse = coarse
        self.w_g = nn.Sequential(
            nn.Conv2d(gate_channels, inter, 1, bias=False), nn.BatchNorm2d(inter)
        )
        # Oktay's gate brings the skip to the gating grid with a 2x2 stride-2 conv.
        k = 2 if coarse else 1
        self.w_x = nn.Sequential(
            nn.Conv2d(skip_channels, inter, k, stride=k, bias=False), nn.BatchNorm2d(inter)
        )
        self.psi = nn.Conv2d(inter, 1, 1, bias=True)

    def attention(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The attention map ``alpha`` (N, 1, h, w) in (0, 1), on the skip's grid.

        ``coarse=False`` (the paper's text): ``g`` has the skip's size.
        ``coarse=True`` (Oktay et al.): ``g`` is on the grid one level coarser
        (h/2, w/2); alpha is computed there and resampled bilinearly.
        """
        want = tuple(s // 2 for s in x.shape[-2:]) if self.coarse else tuple(x.shape[-2:])
        if tuple(g.shape[-2:]) != want:
            raise ValueError(f"gating signal {tuple(g.shape)} does not fit skip {tuple(x.shape)}")
        a = self.w_g(g) + self.w_x(x)
        alpha = torch.sigmoid(self.psi(F.relu(a)))
        if self.coarse:
            alpha = F.interpolate(alpha, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return alpha

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(x * alpha, alpha)``."""
        alpha = self.attention(g, x)
        return x * alpha, alpha


class DecoderBlock(nn.Module):
    """One decoder stage: 2x nearest upsample, optional gated skip, concat, double conv.

    ``(N, c_in, h, w)`` and skip ``(N, c_skip, 2h, 2w)`` -> ``(N, c_out, 2h, 2w)``.
    The gating signal is the upsampled deeper feature (``gate="paper"``) or the
    deeper feature itself, on its coarser grid (``gate="oktay"``).
    ``skip_channels=0`` makes a stage without skip (the last, full-size one).
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        attention: bool = False,
        gate: str = "paper",
    ) -> None:
        super().__init__()
        self.gate = (
            AttentionGate(in_channels, skip_channels, coarse=gate == "oktay")
            if attention and skip_channels
            else None
        )
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns ``(features, alpha)``; ``alpha`` is None without a gate."""
        coarse = x
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        alpha = None
        if skip is not None:
            if self.gate is not None:
                skip, alpha = self.gate(coarse if self.gate.coarse else x, skip)
            x = torch.cat([x, skip], dim=1)
        return self.conv(x), alpha
