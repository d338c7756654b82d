"""Segmentation models: the paper's ResAttUnet and its three baselines, checkpoints, store.

* :func:`build_model` (``name`` in :data:`MODEL_NAMES`) makes a fresh
  ``nn.Module``: ``res_att_unet`` (ResNet34 encoder + attention gates, the
  paper's model), ``res_unet`` (ResNet34, no gates), ``attention_unet`` (plain
  encoder + gates, Oktay 2018), ``unet`` (plain, Ronneberger 2015). All are
  assembled from the same blocks (:mod:`.blocks`, :mod:`.encoders`,
  :mod:`.architectures`).
* Forward: ``x`` ``(N, 3, H, W)`` float32 in [0, 1], H and W multiples of 32
  -> logits ``(N, 1, H, W)``; ``model(x, return_attention=True)`` also returns
  the attention maps.
* Three input channels: a one-channel CT slice is clipped to the lung window
  W1500/L-600 (HU -1350..150), scaled to [0, 1] and replicated to 3 channels,
  so an ImageNet-pretrained stem sees a gray image, and the lung-windowed
  0..255 training JPEGs map identically (v / 255).
* :mod:`.checkpoint`: model versions = ``model.safetensors`` + ``model.json``;
  :mod:`.store`: bundled and user model versions.

Importing this package does not import torch; :func:`build_model` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import MODEL_NAMES, ModelConfig, default_preprocessing

if TYPE_CHECKING:
    from .architectures import SegmentationUNet

__all__ = ["MODEL_NAMES", "ModelConfig", "build_model", "default_preprocessing"]


def build_model(name: str = "res_att_unet", **config: Any) -> SegmentationUNet:
    """A freshly initialised model (imports torch); see :func:`.registry.build_model`."""
    from .registry import build_model as _build

    return _build(name, **config)
