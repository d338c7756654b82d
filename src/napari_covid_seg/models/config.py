"""Model configuration: one JSON-serialisable dataclass for the four architectures.

This module does not import torch, so a model's configuration can be read,
validated and listed cheaply (the model store and the CLI rely on it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

#: Registry names, the paper's model first.
MODEL_NAMES: tuple[str, ...] = ("res_att_unet", "res_unet", "attention_unet", "unet")

#: Which encoder and whether attention gates, per registry name.
_FAMILIES: dict[str, tuple[str, bool]] = {
    "res_att_unet": ("resnet34", True),
    "res_unet": ("resnet34", False),
    "attention_unet": ("plain", True),
    "unet": ("plain", False),
}

#: Decoder widths, deep to shallow (the paper-faithful 256-128-64-32-16).
DEFAULT_DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32, 16)
#: Widths of the plain (U-Net) encoder at strides 2, 4, 8, 16, 32.
DEFAULT_PLAIN_ENCODER_CHANNELS: tuple[int, ...] = (32, 64, 128, 256, 512)
#: Input height and width must be multiples of this (five 2x downsamplings).
SIZE_DIVISOR = 32
#: Number of encoder levels / decoder stages.
DEPTH = 5


def default_preprocessing() -> dict[str, Any]:
    """A fresh copy of the default preprocessing recorded in ``model.json``.

    HU clipped to the lung window W1500/L-600 (HU -1350..150) and scaled to
    [0, 1], the channel replicated to 3, each axial slice resized to
    ``input_size`` squared, slices in canonical ``SPL`` orientation
    (anterior up, patient right on the left), probability threshold 0.5.
    """
    return {
        "input_size": 256,
        "window": [-1350.0, 150.0],
        "channels": "replicate",
        "n_channels": 3,
        "threshold": 0.5,
        "orientation": "SPL",
    }


def normalize_name(name: str) -> str:
    """Registry name from a user spelling (``"Res-Att-UNet"`` -> ``"res_att_unet"``).

    Raises ValueError naming the valid names if unknown.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in _FAMILIES:
        raise ValueError(f"Unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    return key


#: Attention-gate variants (see :class:`ModelConfig`).
GATES: tuple[str, ...] = ("paper", "oktay")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an architecture (not its weights).

    Attributes:
        name: registry name, one of :data:`MODEL_NAMES`.
        in_channels: input channels C of ``(N, C, H, W)`` (3: replicated lung window).
        out_channels: logit channels (1: lesion vs background).
        decoder_channels: five decoder widths, deep to shallow.
        encoder_channels: five widths of the plain encoder (``unet``,
            ``attention_unet``); must be None for the ResNet34 encoders
            (fixed 64, 64, 128, 256, 512).
        encoder_weights: ``"none"``, ``"imagenet"`` or a path to a local
            ResNet34 ``.pth``/``.safetensors`` file; only used when building
            a fresh model (ResNet encoders only). Recorded for provenance;
            loading a saved version ignores it and uses the saved weights.
        gate: the attention gate (models with gates): ``"paper"`` (Ye & Hua's
            text: gating signal = the upsampled decoder feature, coefficients
            computed on the skip's grid) or ``"oktay"`` (Oktay et al. 2018:
            computed on the coarser grid of the decoder feature, the skip
            brought there by a 2x2 stride-2 conv, coefficients resampled
            bilinearly to the skip's size).
    """

    name: str = "res_att_unet"
    in_channels: int = 3
    out_channels: int = 1
    decoder_channels: tuple[int, ...] = DEFAULT_DECODER_CHANNELS
    encoder_channels: tuple[int, ...] | None = None
    encoder_weights: str = "none"
    gate: str = "paper"

    def __post_init__(self) -> None:
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        name = normalize_name(self.name)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "decoder_channels", _widths(self.decoder_channels, "decoder"))
        if self.encoder_channels is not None:
            if self.encoder == "resnet34":
                raise ValueError(
                    f"{name} uses the fixed ResNet34 encoder; leave encoder_channels unset"
                )
            object.__setattr__(self, "encoder_channels", _widths(self.encoder_channels, "encoder"))
        for attr in ("in_channels", "out_channels"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{attr} must be a positive integer, got {value!r}")
        weights = str(self.encoder_weights)
        if weights.lower() in ("none", "imagenet"):
            weights = weights.lower()
        object.__setattr__(self, "encoder_weights", weights)
        if self.encoder == "plain" and weights != "none":
            raise ValueError(
                f"{name} has a plain convolutional encoder without pretrained weights; "
                "use encoder_weights='none' (ImageNet weights exist only for the ResNet34 "
                "encoder of res_att_unet and res_unet)"
            )

    @property
    def encoder(self) -> str:
        """``"resnet34"`` or ``"plain"``."""
        return _FAMILIES[self.name][0]

    @property
    def attention(self) -> bool:
        """Whether the skip connections pass through attention gates."""
        return _FAMILIES[self.name][1]

    @property
    def plain_encoder_channels(self) -> tuple[int, ...]:
        """Widths of the plain encoder (default if unset)."""
        return self.encoder_channels or DEFAULT_PLAIN_ENCODER_CHANNELS

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict; ``build_model(**cfg.to_dict())`` rebuilds the model."""
        d = asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        if self.encoder_channels is not None:
            d["encoder_channels"] = list(self.encoder_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"architecture must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"Unknown architecture keys {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**d)


def _widths(values: Any, what: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{what}_channels must be {DEPTH} integers, got {values!r}") from None
    if len(widths) != DEPTH or min(widths) < 1:
        raise ValueError(f"{what}_channels must be {DEPTH} positive integers, got {values!r}")
    return widths
