"""Guidance (click) channels: one model family serves automatic and interactive use.

A click model is an ordinary model version whose preprocessing says::

    "n_channels": 6,
    "guidance": {"channels": ["positive", "negative", "mask"], "radius_px": 5}

Its input ``(N, 6, S, S)`` is the replicated lung-window image (3 channels,
[0, 1]) followed by the guidance: a positive-click map, a negative-click map
(disks of ``radius_px`` pixels on the model's ``S x S`` grid, values {0, 1})
and the current mask ({0, 1}). Zero guidance means "no clicks, no mask": the
automatic case. :func:`add_guidance_channels` makes a click model from an
automatic one whose output is unchanged under zero guidance (the new
first-convolution weights are zero), so training starts exactly at the base
model. This module does not import torch at import time.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

#: The guidance channels, in input order after the image channels.
GUIDANCE_CHANNELS: tuple[str, ...] = ("positive", "negative", "mask")
#: Default click-disk radius in pixels of the model's input grid (256).
DEFAULT_RADIUS_PX = 5


def guidance_spec(preprocessing: dict | None) -> dict | None:
    """The ``guidance`` entry of a preprocessing dict (channels, radius_px), or None."""
    spec = (preprocessing or {}).get("guidance")
    if not spec:
        return None
    channels = tuple(spec.get("channels", GUIDANCE_CHANNELS))
    if channels != GUIDANCE_CHANNELS:
        raise ValueError(
            f"unsupported guidance channels {list(channels)}; expected {list(GUIDANCE_CHANNELS)}"
        )
    return {"channels": list(channels), "radius_px": int(spec.get("radius_px", DEFAULT_RADIUS_PX))}


def n_guidance_channels(preprocessing: dict | None) -> int:
    """How many of ``n_channels`` are guidance (0 for an automatic model)."""
    spec = guidance_spec(preprocessing)
    return 0 if spec is None else len(spec["channels"])


def click_preprocessing(base: dict, radius_px: int = DEFAULT_RADIUS_PX) -> dict:
    """A click model's preprocessing from its base model's: image channels + 3 guidance."""
    pp = copy.deepcopy(base)
    n_image = int(pp.get("n_channels", 3)) - n_guidance_channels(pp)
    pp["n_channels"] = n_image + len(GUIDANCE_CHANNELS)
    pp["guidance"] = {"channels": list(GUIDANCE_CHANNELS), "radius_px": int(radius_px)}
    return pp


def model_input(x: Any, in_channels: int, preprocessing: dict | None = None) -> Any:
    """A model's input ``(N, in_channels, H, W)`` from image slices ``(N, 1, H, W)`` in [0, 1].

    The image is replicated to the image channels; a click model's guidance
    channels are zeros (no clicks, no mask: the automatic case). What the
    trainer and the quick evaluation feed every model.
    """
    import torch

    n_g = n_guidance_channels(preprocessing)
    image = x.expand(-1, in_channels - n_g, -1, -1)
    if not n_g:
        return image
    zeros = torch.zeros((x.shape[0], n_g, *x.shape[2:]), dtype=x.dtype, device=x.device)
    return torch.cat([image, zeros], dim=1)


def _first_conv_owner(model: nn.Module) -> tuple[Any, str]:
    """``(module, attribute)`` holding the first convolution of a SegmentationUNet encoder."""
    enc = model.encoder
    if hasattr(enc, "conv1"):  # ResNet34Encoder
        return enc, "conv1"
    first = enc.levels[0][0]  # PlainEncoder: DoubleConv -> ConvBNReLU -> Conv2d
    return first, "0"


def add_guidance_channels(model: nn.Module, n_new: int = len(GUIDANCE_CHANNELS)) -> nn.Module:
    """A copy of ``model`` taking ``n_new`` more input channels, with identical output on zeros.

    The first convolution's weight ``(out, C, k, k)`` becomes
    ``(out, C + n_new, k, k)``: the old kernels unchanged, the new ones zero.
    So ``new(cat(x, zeros)) == model(x)`` exactly, and training starts from
    the base model. The copy's ``config.in_channels`` is updated (it is what
    ``model.json`` records, so the version loads back with 6 channels).
    """
    import dataclasses

    import torch
    from torch import nn

    new = copy.deepcopy(model)
    owner, attr = _first_conv_owner(new)
    old: nn.Conv2d = getattr(owner, attr)
    conv = nn.Conv2d(
        old.in_channels + n_new,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        groups=old.groups,
        bias=old.bias is not None,
    ).to(old.weight.device, old.weight.dtype)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, : old.in_channels] = old.weight
        if old.bias is not None:
            conv.bias.copy_(old.bias)  # type: ignore[union-attr]
    setattr(owner, attr, conv)
    if hasattr(new.encoder, "in_channels"):
        new.encoder.in_channels = conv.in_channels
    new.config = dataclasses.replace(new.config, in_channels=conv.in_channels)
    return new
