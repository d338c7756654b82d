"""Encoders returning five feature maps at strides 2, 4, 8, 16 and 32.

Both encoders declare ``out_channels`` (five widths, shallow to deep), so one
decoder fits either. For an input ``(N, C, H, W)`` the features are
``[(N, c0, H/2, W/2), (N, c1, H/4, W/4), ..., (N, c4, H/32, W/32)]``.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from .blocks import DoubleConv


class ResNet34Encoder(ResNet):
    """torchvision's ResNet34 without ``avgpool`` and ``fc`` (as in segmentation_models_pytorch).

    Features: stem ReLU output (64, H/2), layer1 (64, H/4), layer2 (128, H/8),
    layer3 (256, H/16), layer4 (512, H/32). The state-dict keys are those of
    ``torchvision.models.resnet34`` minus ``fc.*``, so ImageNet weights load
    directly. ``in_channels != 3`` replaces the first 7x7 conv (see
    :func:`adapt_first_conv_weight` for adapting pretrained weights).
    """

    out_channels: tuple[int, ...] = (64, 64, 128, 256, 512)

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__(BasicBlock, [3, 4, 6, 3])
        del self.fc
        del self.avgpool
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]


class PlainEncoder(nn.Module):
    """U-Net style encoder of double-conv blocks (Ronneberger 2015), five levels.

    To share the decoder with the ResNet34 encoder it has the same reduction
    pattern: level 0 is a double conv whose first conv has stride 2 (like
    ResNet's stride-2 stem), levels 1-4 are 2x2 max-pool + double conv. So
    there is no full-resolution skip; the last decoder stage upsamples to full
    size without one, exactly as with ResNet34. Default widths
    (32, 64, 128, 256, 512) give about 7.9 M parameters for ``unet``.
    """

    def __init__(
        self, in_channels: int = 3, channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    ) -> None:
        super().__init__()
        self.out_channels = tuple(channels)
        self.in_channels = in_channels
        levels: list[nn.Module] = [DoubleConv(in_channels, channels[0], stride=2)]
        for c_in, c_out in itertools.pairwise(channels):
            levels.append(nn.Sequential(nn.MaxPool2d(2), DoubleConv(c_in, c_out)))
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


def adapt_first_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a pretrained first-conv weight ``(64, 3, k, k)`` to ``in_channels`` inputs.

    One channel: the RGB kernels are summed (a gray image replicated to RGB
    gives the same response). More channels: the RGB kernels are repeated
    cyclically and scaled by ``3 / in_channels`` (as in segmentation_models_pytorch).
    """
    c = weight.shape[1]
    if in_channels == c:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    idx = torch.arange(in_channels) % c
    return weight[:, idx] * (c / in_channels)
