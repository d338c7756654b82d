"""Pretrained ResNet34 encoder weights, from local files only (never the network).

``encoder_weights="imagenet"`` reads torchvision's ``ResNet34_Weights.IMAGENET1K_V1``
file from the local torch hub cache (``torch.hub.get_dir()/checkpoints/``, which
follows ``$TORCH_HOME``). If it is not there this module does not download it:
it raises :class:`~napari_covid_seg.errors.ModelLoadError` naming the exact path
where to put the file and the URL to fetch it from on a machine with internet.
Any other value is a path to a ResNet34 state dict (``.pth``/``.pt`` read with
``torch.load(weights_only=True)``, or ``.safetensors``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..errors import ModelLoadError
from .encoders import ResNet34Encoder, adapt_first_conv_weight
from .metadata import brief

#: Prefixes stripped from state-dict keys (DataParallel, torch.compile).
_PREFIXES = ("module.", "_orig_mod.")


def imagenet_weights_url() -> str:
    """Download URL of torchvision's ResNet34 ImageNet weights (IMAGENET1K_V1)."""
    from torchvision.models import ResNet34_Weights

    return ResNet34_Weights.IMAGENET1K_V1.url


def imagenet_weights_path() -> Path:
    """Where torchvision caches the ResNet34 ImageNet weights on this machine."""
    filename = os.path.basename(urlparse(imagenet_weights_url()).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``.pt``/``.pth`` state dict (no unpickling).

    Raises ModelLoadError if the file is missing, corrupt or holds pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise ModelLoadError(
                f"{path} is not a readable safetensors file (corrupt or truncated?): {err}"
            ) from err
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelLoadError(
            f"{path}: napari-covid-seg refuses to unpickle this file: it is not a plain "
            f"tensor state dict loadable with weights_only=True ({type(err).__name__}: "
            f"{brief(err, 200)}). Re-save the weights as "
            "safetensors or as a state dict of tensors."
        ) from err
    return extract_state_dict(obj, path)


def extract_state_dict(obj: object, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensor state dict in a loaded checkpoint object, with wrapper prefixes stripped.

    Accepts a plain state dict or a dict holding one under ``state_dict``,
    ``model_state_dict``, ``model`` or ``weights``.
    """
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "weights"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ModelLoadError(f"{path} does not hold a state dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))[:5]
        raise ModelLoadError(f"{path} holds non-tensor entries {bad}; expected a state dict")
    return {_strip(str(k)): v for k, v in tensors.items()}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def load_encoder_weights(encoder: ResNet34Encoder, spec: str) -> None:
    """Load ``spec`` (``"none"``, ``"imagenet"`` or a file path) into ``encoder`` in place.

    The first conv is adapted when the file has 3 input channels and the
    encoder another number. Never touches the network.
    """
    if spec == "none":
        return
    if spec == "imagenet":
        path = imagenet_weights_path()
        if not path.is_file():
            raise ModelLoadError(
                "ImageNet weights for the ResNet34 encoder are not on this machine and "
                f"napari-covid-seg never downloads them. Put the file at {path} "
                f"(download {imagenet_weights_url()} on a machine with internet), or use "
                "encoder_weights='none'."
            )
    else:
        path = Path(spec).expanduser()
    state = read_state_dict(path)
    if any(k.startswith("encoder.") for k in state):  # a whole segmentation model
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    w = state.get("conv1.weight")
    if w is not None and w.ndim == 4 and w.shape[1] != encoder.conv1.in_channels:
        state["conv1.weight"] = adapt_first_conv_weight(w, encoder.conv1.in_channels)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(
            f"{path} is not a torchvision ResNet34 state dict: {brief(err)}"
        ) from err
