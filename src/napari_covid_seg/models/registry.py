"""``build_model(name, **config)``: the one way to make a fresh model. No network access."""

from __future__ import annotations

from typing import Any

from .architectures import SegmentationUNet
from .config import ModelConfig


def build_model(name: str = "res_att_unet", **config: Any) -> SegmentationUNet:
    """A freshly initialised model; see :class:`ModelConfig` for the options.

    ``encoder_weights`` may be ``"none"`` (default), ``"imagenet"`` (read from
    the local torch hub cache, never downloaded) or a local ResNet34 weights
    file. Raises ValueError for a bad configuration and ModelLoadError for
    missing or unreadable encoder weights.
    """
    cfg = ModelConfig(name=name, **config)
    model = SegmentationUNet(cfg)
    if cfg.encoder_weights != "none":
        from .pretrained import load_encoder_weights

        load_encoder_weights(model.encoder, cfg.encoder_weights)
    return model
