"""The four architectures: one encoder-decoder class, configured by :class:`ModelConfig`.

======================  =================  ===============  ============
registry name           encoder            attention gates  parameters
======================  =================  ===============  ============
``res_att_unet``        ResNet34           yes              ~24.57 M
``res_unet``            ResNet34           no               ~24.44 M
``attention_unet``      plain double-conv  yes              ~7.98 M
``unet``                plain double-conv  no               ~7.85 M
======================  =================  ===============  ============

(default widths: decoder 256-128-64-32-16; plain encoder 32-64-128-256-512.)

Data flow for an input ``x`` of shape ``(N, C, H, W)``, H and W multiples of 32::

    encoder(x) -> f0 (H/2), f1 (H/4), f2 (H/8), f3 (H/16), f4 (H/32)
    y = f4
    for skip in (f3, f2, f1, f0, None):        # 5 decoder stages
        y = upsample2x(y)                      # gating signal g
        if skip: y = cat(y, gate(g=y, x=skip)) # gate = identity without attention
        y = conv3x3-BN-ReLU x2 (y)             # 256, 128, 64, 32, 16 channels
    logits = conv1x1(y)                        # (N, 1, H, W)

Input channels: a CT slice has one channel. It is clipped to the lung window
W1500/L-600 (HU -1350..150), scaled to [0, 1] and replicated to 3 channels,
so an ImageNet-pretrained ResNet34 stem sees a gray image, and the 8-bit
training JPEGs (already lung-windowed to 0..255) map identically as v / 255
(HU = -1350 + v * 1500 / 255). No ImageNet mean/std normalisation is applied;
BatchNorm after the first conv absorbs the offset during fine-tuning.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidImageError
from .blocks import DecoderBlock
from .config import SIZE_DIVISOR, ModelConfig
from .encoders import PlainEncoder, ResNet34Encoder


class InputShapeError(InvalidImageError):
    """An input tensor has the wrong rank, channel count or spatial size."""


def nearest_valid_sizes(
    height: int, width: int, divisor: int = SIZE_DIVISOR
) -> list[tuple[int, int]]:
    """Nearest sizes (rounding down, then up) with both sides multiples of ``divisor``."""

    def down(n: int) -> int:
        return n // divisor * divisor

    def up(n: int) -> int:
        return -(-n // divisor) * divisor

    sizes = []
    if down(height) > 0 and down(width) > 0:
        sizes.append((down(height), down(width)))
    sizes.append((up(height), up(width)))
    return list(dict.fromkeys(sizes))


def check_input_shape(shape: tuple[int, ...] | torch.Size, in_channels: int) -> None:
    """Raise :class:`InputShapeError` unless ``shape`` is ``(N, in_channels, H, W)``
    with H and W multiples of 32; the message names the nearest valid sizes."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4:
        raise InputShapeError(
            f"Expected a batch of shape (N, C, H, W), got {shape}; add the missing axes"
        )
    _, c, h, w = shape
    if c != in_channels:
        raise InputShapeError(
            f"The model expects {in_channels} input channel(s), got {c}; a CT slice is "
            f"lung-windowed to [0, 1] and replicated to {in_channels} channel(s)"
        )
    if h % SIZE_DIVISOR or w % SIZE_DIVISOR:
        options = " or ".join(f"{a}x{b}" for a, b in nearest_valid_sizes(h, w))
        raise InputShapeError(
            f"{h}x{w} is not divisible by {SIZE_DIVISOR}; use {options} (pad or resize)"
        )


class SegmentationUNet(nn.Module):
    """Encoder (ResNet34 or plain) + U-Net decoder with optional attention gates.

    ``forward(x)`` maps ``(N, C, H, W)`` float in [0, 1] to logits
    ``(N, out_channels, H, W)``; ``forward(x, return_attention=True)`` returns
    ``(logits, alphas)``, alphas being the gates' ``(N, 1, h, w)`` maps in (0, 1),
    coarse (H/16) to fine (H/2), or ``[]`` for models without gates.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.encoder == "resnet34":
            self.encoder: nn.Module = ResNet34Encoder(config.in_channels)
        else:
            self.encoder = PlainEncoder(config.in_channels, config.plain_encoder_channels)
        enc = tuple(self.encoder.out_channels)
        dec = config.decoder_channels
        skips = (*enc[-2::-1], 0)  # f3, f2, f1, f0, none
        ins = (enc[-1], *dec[:-1])
        self.decoder = nn.ModuleList(
            DecoderBlock(c_in, c_skip, c_out, attention=config.attention, gate=config.gate)
            for c_in, c_skip, c_out in zip(ins, skips, dec, strict=True)
        )
        self.head = nn.Conv2d(dec[-1], config.out_channels, kernel_size=1)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        check_input_shape(x.shape, self.config.in_channels)
        features = self.encoder(x)
        y = features[-1]
        skips: list[torch.Tensor | None] = [*features[-2::-1], None]
        alphas: list[torch.Tensor] = []
        for block, skip in zip(self.decoder, skips, strict=True):
            y, alpha = block(y, skip)
            if alpha is not None:
                alphas.append(alpha)
        logits = self.head(y)
        return (logits, alphas) if return_attention else logits

    def extra_repr(self) -> str:
        return f"name={self.config.name!r}"
