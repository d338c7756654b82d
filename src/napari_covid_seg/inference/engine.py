"""Whole-volume lesion segmentation: batched, memory-bounded, cancellable, GUI-free.

``iter_segment(volume, model)`` is a generator: it yields
:class:`Progress` ``(done, total)`` (axial slices) after every batch and
returns a :class:`SegmentationResult`; :func:`segment` runs it with optional
``progress`` / ``should_cancel`` callbacks. napari widgets run the generator
in a ``thread_worker``.

Data flow for a CT ``Volume`` (source order ``(z, y, x)``)::

    canonical view (S, P, L) of the int16 source      (no copy: transposes/flips)
      -> batch of B axial slices (B, H, W), copied one batch at a time
      -> device: window to [0, 1], resize to the model size (B, C, s, s)
      -> model (autocast bf16 on GPU / bf16-capable CPUs, channels_last)
      -> logits resized back to (B, H, W) -> probability uint8, mask uint8
      -> written into preallocated (z, y, x) arrays through the same view
    lung mask (classical) -> restrict to lungs -> per-slice uncertainty

Host memory is the input plus two uint8 outputs plus one batch; a float32
copy of the volume is never made. On CUDA the next batch's host-to-device
copy (pinned memory, non_blocking) overlaps the current batch's compute and
device-to-host copy. Out of memory halves the batch, then falls back to the
CPU with a warning.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import os
import time
import warnings
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..errors import CancelledError, InvalidImageError
from ..io.orientation import from_canonical, to_canonical
from ..io.volume import HU, WINDOWED, Volume
from .device import (
    auto_batch_size,
    autocast_dtype,
    describe_device,
    free_device_memory,
    is_out_of_memory,
    oom_backoff,
    precision_name,
    resolve_device,
)
from .preprocess import (
    default_preprocessing,
    intensity_affine,
    model_input_size,
    slice_reorientation,
)
from .roi import Roi, crop_pad_tensor, paste_tensor

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .quantify import Quantification

#: Model input H and W must be multiples of this (five 2x downsamplings).
SIZE_DIVISOR = 32
#: Source dtypes torch converts directly; others go through float32 per batch.
_TORCH_DTYPES = ("int16", "int32", "int8", "uint8", "float32", "float16", "float64")

#: Set to "1" to use the double-buffered (CUDA) batch path on any device (tests).
PIPELINE_ENV = "NAPARI_COVID_SEG_PIPELINE"

ModelLike = Any  # ModelVersion | Predictor | nn.Module | str | os.PathLike


class Progress(NamedTuple):
    """Axial slices done out of total."""

    done: int
    total: int


@dataclass
class SegmentationResult:
    """Prediction for one Volume; every array is in the source ``(z, y, x)`` order.

    Attributes:
        probability: lesion probability, uint8 0..255 (= p * 255) or float16 0..1.
        mask: uint8 {0, 1} lesion mask (``p > threshold``, restricted to the lungs
            when asked).
        volume: the input Volume (its geometry: ``write_mask(path, r.mask, like=r.volume)``).
        lungs: uint8 labels (0, 1 = right lung, 2 = left lung) or None.
        uncertainty: float32 ``(n_axial,)`` mean binary entropy (bits) per axial
            slice inside the lungs, indexed along ``axial_axis``; None if off.
        attention: the finest attention gates' maps (finest first), uint8
            ``(z, y, x)`` 0..255, when asked for and the model has gates.
        device: the device that ran the model (``"cpu"`` after an OOM fallback).
        timings: seconds: ``lungs``, ``inference``, ``postprocess``, ``total``.
        messages: warnings for the user (batch halved, CPU fallback, lung
            restriction skipped...).
        lung_report: the lung mask's story: ``status`` ("ok": restriction
            applied, "skipped": not applied and ``reason`` says why, "off"),
            ``right_ml``/``left_ml``, ``notes``, and ``roi`` (the model's
            lung-ROI box in canonical in-plane indices and its source).
        tta: test-time flips: ``on`` (bool), ``mode`` ("auto", "on", "off")
            and, in auto mode, ``lung_noise_hu`` and ``reason``.
    """

    probability: np.ndarray
    mask: np.ndarray
    volume: Volume
    threshold: float
    lungs: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    attention: list[np.ndarray] | None = None
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 1
    model_name: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    lung_report: dict | None = None
    tta: dict | None = None
    _quantification: Quantification | None = field(default=None, repr=False)

    @property
    def axial_axis(self) -> int:
        """Source axis of the axial slices (the index of :attr:`uncertainty`)."""
        return slice_reorientation(self.volume).axial_axis

    def quantify(self) -> Quantification:
        """Lesion burden (mL, % of each lung, lesion count); computed once."""
        if self._quantification is None:
            from .quantify import quantify

            self._quantification = quantify(self.mask, self.volume.voxel_volume_ml, self.lungs)
        return self._quantification

    def mask_volume(self) -> Volume:
        """The mask as a Volume with the input's geometry."""
        return self.volume.with_data(self.mask, is_mask=True)

    def slices_to_review(self, k: int | None = None) -> np.ndarray:
        """Axial slice indices (source axis), most uncertain first."""
        from .uncertainty import most_uncertain_slices

        if self.uncertainty is None:
            return np.arange(self.mask.shape[self.axial_axis])[:k]
        return most_uncertain_slices(self.uncertainty, k)


# -- the model on its device ---------------------------------------------------------------


class Predictor:
    """A model prepared for fast inference on one device; reuse it across volumes.

    Args:
        model: ``nn.Module`` mapping ``(N, C, H, W)`` in [0, 1] to logits
            ``(N, 1, H, W)`` (optionally ``return_attention=True``). It is
            copied before being moved, converted or fused; the caller's
            module is left as it was.
        preprocessing: the model version's preprocessing dict (window,
            n_channels, input_size, threshold); missing keys take the defaults.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"``, ``"mps"`` or a torch.device.
        precision: ``"auto"`` (bf16 on CUDA and bf16-capable CPUs), ``"fp32"``,
            ``"bf16"``, ``"fp16"``.
        channels_last: NHWC memory format (faster convolutions on CPU and GPU).
        fuse: fold eval-mode BatchNorm into the preceding convolutions.
        compile: ``torch.compile`` the model (slow first batch; GPU throughput).
    """

    def __init__(
        self,
        model: nn.Module,
        preprocessing: dict | None = None,
        *,
        device: str | torch.device | None = "auto",
        precision: str = "auto",
        channels_last: bool = True,
        fuse: bool = True,
        compile: bool = False,
        name: str = "",
        tta: bool = False,
    ) -> None:
        import torch

        self.device = resolve_device(device)
        self.preprocessing = {**default_preprocessing(), **(preprocessing or {})}
        self.name = name or type(model).__name__
        self.channels_last = channels_last
        self.autocast = autocast_dtype(self.device, precision)
        self.compiled = compile
        self.tta = tta
        self.supports_attention = _accepts_kwarg(model, "return_attention")
        self.n_channels = int(self.preprocessing.get("n_channels", 3))
        from ..models.guidance import n_guidance_channels

        #: Guidance (click) channels after the image channels; 0 for an automatic model.
        self.n_guidance = n_guidance_channels(self.preprocessing)
        self.input_size = model_input_size(self.preprocessing)
        self._source_model = model
        self._fuse = fuse
        self.model = self._prepare(model, fuse)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _prepare(self, model: nn.Module, fuse: bool) -> nn.Module:
        import torch

        m = copy.deepcopy(model).eval()
        if fuse:
            m = fuse_conv_bn(m)
        m = m.to(self.device)
        if self.channels_last and not isinstance(m, torch.jit.ScriptModule):
            m = m.to(memory_format=torch.channels_last)
        for p in m.parameters():
            p.requires_grad_(False)
        if self.compiled:
            m = torch.compile(m, dynamic=False)
        return m

    @property
    def precision(self) -> str:
        return precision_name(self.autocast)

    def to_cpu(self) -> Predictor:
        """A new Predictor of the same model on the CPU (after running out of GPU memory).

        This predictor is left as it was: the caller may still own it and use it.
        """
        return Predictor(
            self._source_model,
            self.preprocessing,
            device="cpu",
            precision="auto" if self.autocast else "fp32",
            channels_last=self.channels_last,
            fuse=self._fuse,
            compile=self.compiled,
            name=self.name,
            tta=self.tta,
        )

    def model_hw(self, height: int, width: int) -> tuple[int, int]:
        """The size a ``height x width`` slice is presented at."""
        if self.input_size is not None:
            return self.input_size
        return _round_up(height, SIZE_DIVISOR), _round_up(width, SIZE_DIVISOR)

    def forward(
        self,
        x: torch.Tensor,
        intensity: str,
        *,
        attention: int = 0,
        roi: Roi | None = None,
        fill: float = -1000.0,
        guidance: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Raw slices ``(B, H, W)`` on the device -> logits ``(B, H, W)`` float32.

        With an ``roi`` (see :mod:`.roi`) only that square, padded with
        ``fill`` past the image, is shown to the model; outside it the logits
        are -30 (background). Also returns up to ``attention`` attention maps
        ``(B, H, W)`` in [0, 1] (finest first), resized back to the slice size.

        ``guidance`` (click models, :mod:`..models.guidance`): ``(B, G, H, W)``
        in [0, 1] on the slice grid (positive clicks, negative clicks, current
        mask); cropped to the ROI (fill 0) and resized like the image, then
        appended to the image channels. None: zeros (no clicks, no mask), so
        a click model also runs as an automatic model. Ignored otherwise.
        """
        import torch
        import torch.nn.functional as F

        full_h, full_w = x.shape[-2:]
        offset, scale = intensity_affine(intensity, self.preprocessing.get("window", (-1350, 150)))
        with torch.inference_mode():
            t = x.to(torch.float32)
            if roi is not None:
                t = crop_pad_tensor(t, roi, fill)
            h, w = t.shape[-2:]
            t = ((t - offset) * scale).clamp_(0.0, 1.0)[:, None]  # (B, 1, h, w)
            mh, mw = self.model_hw(h, w)
            if self.input_size is not None:
                if (mh, mw) != (h, w):
                    down = mh < h or mw < w
                    t = F.interpolate(
                        t, size=(mh, mw), mode="bilinear", align_corners=False, antialias=down
                    )
            elif (mh, mw) != (h, w):
                t = F.pad(t, (0, mw - w, 0, mh - h), mode="replicate")
            n_image = self.n_channels - self.n_guidance
            if n_image != 1:
                t = t.expand(-1, n_image, -1, -1)
            if self.n_guidance:
                t = torch.cat([t, self._guidance_input(guidance, t, roi, h, w)], dim=1)
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            t = t.contiguous(memory_format=fmt)
            want_alpha = attention > 0 and self.supports_attention
            with torch.autocast(
                self.device.type if self.device.type in ("cuda", "cpu", "mps") else "cpu",
                dtype=self.autocast or torch.float32,
                enabled=self.autocast is not None,
            ):
                out = self.model(t, return_attention=True) if want_alpha else self.model(t)
                if self.tta:
                    # Test-time augmentation: the mean logit of the slice and its mirror.
                    mirrored = self.model(t.flip(-1))
                    mirrored = mirrored[0] if isinstance(mirrored, tuple | list) else mirrored
                    if isinstance(out, tuple | list):
                        out = ((out[0] + mirrored.flip(-1)) * 0.5, *out[1:])
                    else:
                        out = (out + mirrored.flip(-1)) * 0.5
            alphas: list[torch.Tensor] = []
            if isinstance(out, tuple | list):
                out, raw_alphas = out[0], (out[1] if want_alpha else [])
                finest = sorted(raw_alphas, key=lambda a: -a.shape[-1])[:attention]
                for a in finest:
                    a = F.interpolate(
                        a.float(), size=(mh, mw), mode="bilinear", align_corners=False
                    )
                    alphas.append(self._to_native(a, h, w)[:, 0])
            logits = self._to_native(out[:, :1].float(), h, w)[:, 0]
            if roi is not None:
                logits = paste_tensor(logits, roi, full_h, full_w, -30.0)
                alphas = [paste_tensor(a, roi, full_h, full_w, 0.0) for a in alphas]
        return logits, alphas

    def _guidance_input(
        self, guidance: torch.Tensor | None, t: torch.Tensor, roi: Roi | None, h: int, w: int
    ) -> torch.Tensor:
        """Guidance ``(B, G, H, W)`` on the slice grid -> ``(B, G, mh, mw)``, like the image."""
        import torch
        import torch.nn.functional as F

        b, _, mh, mw = t.shape
        if guidance is None:
            return t.new_zeros((b, self.n_guidance, mh, mw))
        if guidance.shape[:2] != (b, self.n_guidance):
            raise ValueError(
                f"guidance must be (B, {self.n_guidance}, H, W) for B = {b}, "
                f"got {tuple(guidance.shape)}"
            )
        gd = guidance.to(t.device, torch.float32)
        if roi is not None:
            gd = crop_pad_tensor(gd, roi, 0.0)
        if (mh, mw) != (h, w):
            if self.input_size is not None:
                down = mh < h or mw < w
                gd = F.interpolate(
                    gd, size=(mh, mw), mode="bilinear", align_corners=False, antialias=down
                )
            else:
                gd = F.pad(gd, (0, mw - w, 0, mh - h))
        return gd.clamp_(0.0, 1.0).to(t.dtype)

    def _to_native(self, y: torch.Tensor, h: int, w: int) -> torch.Tensor:
        import torch.nn.functional as F

        if y.shape[-2:] == (h, w):
            return y
        if self.input_size is None:
            return y[..., :h, :w]
        down = y.shape[-2] > h or y.shape[-1] > w
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False, antialias=down)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _accepts_kwarg(model: Any, name: str) -> bool:
    forward = getattr(model, "forward", None)
    if forward is None:
        return False
    try:
        return name in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold eval-mode BatchNorm2d into the Conv2d before it, in place; returns ``model``.

    Fuses ``nn.Sequential(Conv2d, BatchNorm2d, ...)`` pairs anywhere, and
    torchvision ResNet/BasicBlock/Bottleneck ``convN``/``bnN`` attribute pairs
    (their forward applies ``bnN(convN(x))``). Outputs are unchanged up to
    float rounding; about 10-20 % faster on CPU.
    """
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if isinstance(model, torch.jit.ScriptModule) or model.training:
        return model
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

        resnet_types: tuple[type, ...] = (BasicBlock, Bottleneck, ResNet)
    except ImportError:  # pragma: no cover - torchvision is a dependency
        resnet_types = ()

    def fusable(conv: Any, bn: Any) -> bool:
        return (
            type(conv) is nn.Conv2d
            and type(bn) is nn.BatchNorm2d
            and bn.track_running_stats
            and conv.out_channels == bn.num_features
        )

    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in itertools.pairwise(names):
                conv, bn = module._modules[a], module._modules[b]
                if fusable(conv, bn):
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = nn.Identity()
        elif resnet_types and isinstance(module, resnet_types):
            for k in (1, 2, 3):
                conv, bn = getattr(module, f"conv{k}", None), getattr(module, f"bn{k}", None)
                if fusable(conv, bn):
                    setattr(module, f"conv{k}", fuse_conv_bn_eval(conv, bn))
                    setattr(module, f"bn{k}", nn.Identity())
    return model


def load_predictor(
    model: ModelLike,
    *,
    device: str | torch.device | None = "auto",
    precision: str = "auto",
    preprocessing: dict | None = None,
    channels_last: bool = True,
    fuse: bool = True,
    compile: bool = False,
    store: Any = None,
    tta: bool = False,
) -> Predictor:
    """A :class:`Predictor` from a ModelVersion, a store name or path, or an ``nn.Module``.

    * ``Predictor``: returned as is (its device and precision are kept).
    * ``str`` / ``PathLike``: resolved by ``ModelStore.resolve`` (``"default"``,
      a store name, or a model folder/file) and loaded safely.
    * a ``ModelVersion`` (anything with ``.model`` and ``.preprocessing``).
    * an ``nn.Module``: preprocessing from ``preprocessing=``, else its
      ``.preprocessing`` attribute, else the defaults.
    """
    from torch import nn

    if isinstance(model, Predictor):
        return model
    name = ""
    if isinstance(model, str | os.PathLike):
        from ..models.checkpoint import load_model_version
        from ..models.store import ModelStore

        path = (store or ModelStore()).resolve(model)
        model = load_model_version(path, device="cpu")
    if hasattr(model, "model") and hasattr(model, "preprocessing"):
        name = getattr(model, "name", "") or ""
        pp = preprocessing or model.preprocessing
        module = model.model
    elif isinstance(model, nn.Module):
        pp = preprocessing or getattr(model, "preprocessing", None)
        module = model
    else:
        raise TypeError(
            f"cannot segment with a {type(model).__name__}; pass a ModelVersion, a model "
            "name or path, or a torch.nn.Module"
        )
    return Predictor(
        module,
        pp,
        device=device,
        precision=precision,
        channels_last=channels_last,
        fuse=fuse,
        compile=compile,
        name=name,
        tta=tta,
    )


# -- batches --------------------------------------------------------------------------------


class _Pending(NamedTuple):
    start: int
    count: int
    prob: Any  # host tensor (B, H, W)
    mask: Any
    alphas: list
    event: Any  # CUDA event or None


class _BatchRunner:
    """Runs batches on the predictor's device; on CUDA double-buffers pinned host memory."""

    def __init__(
        self,
        predictor: Predictor,
        canon: np.ndarray,
        *,
        intensity: str,
        threshold: float,
        prob_dtype: str,
        attention: int,
        max_batch: int,
        roi: Roi | None = None,
        fill: float = -1000.0,
        clutter: np.ndarray | None = None,
        standardize: Any = None,
    ) -> None:
        import torch

        self.p = predictor
        self.canon = canon
        self.roi = roi
        self.fill = fill
        self.clutter = clutter
        self.standardize = standardize  # an intensity.Standardization, or None
        self.intensity = intensity
        self.logit_threshold = _logit(threshold)
        self.prob_float = prob_dtype == "float16"
        self.attention = attention
        self.src_dtype = canon.dtype if canon.dtype.name in _TORCH_DTYPES else np.dtype("float32")
        if standardize is not None:
            self.src_dtype = np.dtype("float32")
        self._ring: list[dict] = []
        self._k = 0
        self._max_batch = max_batch
        self._torch = torch

    @property
    def pipelined(self) -> bool:
        """Double-buffered host memory (pinned on CUDA); forced by ``PIPELINE_ENV=1``."""
        return self.p.device.type == "cuda" or os.environ.get(PIPELINE_ENV) == "1"

    def _buffers(self, slot: int) -> dict:
        torch = self._torch
        while len(self._ring) <= slot:
            b, (h, w) = self._max_batch, self.canon.shape[1:]
            pin = self.p.device.type == "cuda"
            src = torch.from_numpy(np.empty((0,), dtype=self.src_dtype)).dtype
            pdt = torch.float16 if self.prob_float else torch.uint8
            self._ring.append(
                {
                    "x": torch.empty((b, h, w), dtype=src, pin_memory=pin),
                    "prob": torch.empty((b, h, w), dtype=pdt, pin_memory=pin),
                    "mask": torch.empty((b, h, w), dtype=torch.uint8, pin_memory=pin),
                    "alphas": [
                        torch.empty((b, h, w), dtype=torch.uint8, pin_memory=pin)
                        for _ in range(self.attention)
                    ],
                }
            )
        return self._ring[slot]

    def submit(self, start: int, count: int, pad_to: int | None = None) -> _Pending:
        """Start batch ``canon[start:start+count]``; results arrive via :meth:`collect`."""
        torch = self._torch
        block = self.canon[start : start + count]
        if self.standardize is not None:  # the scanner's HU in the training images' scale
            block = self.standardize.apply(block)
        if self.clutter is not None:  # table, arms: shown to the model as air
            block = np.where(self.clutter[start : start + count], self.fill, block).astype(
                block.dtype, copy=False
            )
        if self.pipelined:
            slot = self._k % 2
            buf = self._buffers(slot)
            host_x = buf["x"][:count]
            host_x.numpy()[...] = block  # one gather from the (maybe transposed) source view
            x = host_x.to(self.p.device, non_blocking=True)
        else:
            x = torch.from_numpy(np.ascontiguousarray(block, dtype=self.src_dtype))
            if self.p.device.type != "cpu":
                x = x.to(self.p.device)
        if pad_to is not None and pad_to > count:
            x = torch.cat([x, x[-1:].expand(pad_to - count, -1, -1)])
        logits, alphas = self.p.forward(
            x, self.intensity, attention=self.attention, roi=self.roi, fill=self.fill
        )
        logits, alphas = logits[:count], [a[:count] for a in alphas]
        with torch.inference_mode():
            mask = (logits > self.logit_threshold).to(torch.uint8)
            prob = torch.sigmoid(logits)
            prob = prob.half() if self.prob_float else prob.mul_(255.0).round_().to(torch.uint8)
            alphas = [a.mul(255.0).round_().clamp_(0, 255).to(torch.uint8) for a in alphas]
            if not self.pipelined:
                return _Pending(
                    start, count, prob.cpu(), mask.cpu(), [a.cpu() for a in alphas], None
                )
            buf["prob"][:count].copy_(prob, non_blocking=True)
            buf["mask"][:count].copy_(mask, non_blocking=True)
            for dst, a in zip(buf["alphas"], alphas, strict=False):
                dst[:count].copy_(a, non_blocking=True)
            event = None
            if self.p.device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
        self._k += 1
        return _Pending(
            start,
            count,
            buf["prob"][:count],
            buf["mask"][:count],
            [a[:count] for a in buf["alphas"][: len(alphas)]],
            event,
        )

    @staticmethod
    def collect(p: _Pending) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        if p.event is not None:
            p.event.synchronize()
        return p.prob.numpy(), p.mask.numpy(), [a.numpy() for a in p.alphas]


def _logit(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {p}")
    return math.log(p / (1.0 - p))


# -- the volume -----------------------------------------------------------------------------


def as_volume(image: Volume | np.ndarray, *, intensity: str | None = None) -> Volume:
    """A Volume from a Volume, a 2D slice ``(y, x)`` or a 3D array ``(z, y, x)``.

    Arrays are taken as napari shows them: unit spacing, axial slices
    displayed anterior up and patient right on the left (the radiological
    view), so the model sees a 2D slice exactly as displayed. Their intensity
    kind is guessed (0..255 lung-windowed vs HU) unless given.
    """
    if isinstance(image, Volume):
        vol = image
    else:
        data = np.asarray(image)
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise InvalidImageError(
                f"expected a 2D slice (y, x) or a 3D volume (z, y, x), got shape {data.shape}"
            )
        from ..io import looks_windowed

        kind = intensity or (WINDOWED if looks_windowed(data) else HU)
        vol = Volume.from_napari(data, intensity=kind)
    if vol.is_mask:
        raise InvalidImageError(
            "this image is a label mask, not a CT; choose the CT image to segment"
        )
    if vol.data.size == 0:
        raise InvalidImageError(f"the image is empty (shape {vol.data.shape})")
    if vol.data.dtype.kind not in "iuf" and vol.data.dtype != np.bool_:
        raise InvalidImageError(f"cannot segment an image of dtype {vol.data.dtype}")
    if intensity is not None and intensity != vol.intensity:
        from dataclasses import replace

        vol = replace(vol, intensity=intensity)
    return vol


def iter_segment(
    volume: Volume | np.ndarray,
    model: ModelLike,
    *,
    device: str | torch.device | None = "auto",
    batch_size: int | str = "auto",
    threshold: float | None = None,
    restrict_to_lungs: bool = True,
    lungs: bool | np.ndarray = True,
    uncertainty: bool = True,
    attention: bool | int = False,
    probability_dtype: str = "uint8",
    precision: str = "auto",
    compile: bool = False,
    preprocessing: dict | None = None,
    tta: bool | str | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Generator[Progress, None, SegmentationResult]:
    """Segment lesions slice-batch by slice-batch; yields Progress, returns the result.

    Args:
        volume: a CT Volume (HU or lung-windowed 0..255), or a 2D/3D array.
        model: ModelVersion, :class:`Predictor`, model name/path, or nn.Module
            (see :func:`load_predictor`). ``device``, ``precision``,
            ``compile`` and ``preprocessing`` do not apply to a Predictor.
        batch_size: slices per batch, or ``"auto"`` (free GPU memory / CPU default).
        threshold: probability cut; None takes the model's (``preprocessing["threshold"]``).
        restrict_to_lungs: drop predictions outside the lungs (their per-slice convex
            hull, dilated by 5 mm), unless the lung mask looks wrong or the cut
            would remove most confident lesion voxels (``lung_report`` says why).
        lungs: compute the classical lung mask (True), skip it (False), or use
            the given ``(z, y, x)`` label array.
        uncertainty: compute the per-slice entropy score.
        attention: return the finest attention maps (True = 2, or a count).
        probability_dtype: ``"uint8"`` (p * 255) or ``"float16"``.
        tta: test-time augmentation (mean of the slice and its right-left mirror;
            twice the model cost). True/False: on/off. None or ``"auto"``: on
            when the Predictor says so, else on only for noisy scans (lung
            noise above :data:`~.intensity.AUTO_TTA_NOISE_HU`, e.g. a sharp
            kernel at low dose), where the flips steady the threshold.
        should_cancel: polled before every batch; True raises CancelledError.
    Raises:
        CancelledError: cancelled; no output exists.
        DeviceError: the device is not available.
        InvalidImageError: the image cannot be segmented.
    """
    t_start = time.perf_counter()
    vol = as_volume(volume)
    predictor = load_predictor(
        model,
        device=device,
        precision=precision,
        preprocessing=preprocessing,
        compile=compile,
        tta=tta is True,
    )
    auto_tta = (tta is None or tta == "auto") and not predictor.tta
    if isinstance(tta, bool) and predictor.tta != tta:
        predictor = copy.copy(predictor)  # the caller's Predictor keeps its setting
        predictor.tta = tta
    tta_report: dict = {"mode": "auto" if auto_tta else ("on" if predictor.tta else "off")}
    if probability_dtype not in ("uint8", "float16"):
        raise ValueError(
            f"probability_dtype must be 'uint8' or 'float16', not {probability_dtype!r}"
        )
    thr = float(predictor.preprocessing.get("threshold", 0.5) if threshold is None else threshold)
    _logit(thr)
    n_alpha = (2 if attention is True else int(attention)) if predictor.supports_attention else 0
    messages: list[str] = []
    timings: dict[str, float] = {}
    r = slice_reorientation(vol)
    canon = to_canonical(vol.data, r)
    n, h, w = canon.shape
    mh, mw = predictor.model_hw(h, w)

    # Outputs: preallocated in source order, filled through canonical views.
    prob = np.zeros(vol.data.shape, dtype=np.uint8 if probability_dtype == "uint8" else np.float16)
    mask = np.zeros(vol.data.shape, dtype=np.uint8)
    alpha_maps = [np.zeros(vol.data.shape, dtype=np.uint8) for _ in range(n_alpha)]
    prob_c, mask_c = to_canonical(prob, r), to_canonical(mask, r)
    alpha_c = [to_canonical(a, r) for a in alpha_maps]

    yield Progress(0, n)
    # The classical lung mask (CPU, about a second for 300 x 512 x 512), on the canonical
    # array. A model with a lung-ROI policy needs it first (the ROI); otherwise on a GPU
    # it runs in a thread beside the model (scipy releases the GIL).
    from .intensity import Standardization, standardization, standardize_spec
    from .lungs import air_threshold, check_lungs
    from .roi import choose_roi, clutter_mask, fill_value, roi_spec

    spec = roi_spec(predictor.preprocessing)
    spacing_c = tuple(float(vol.spacing[a]) for a in r.axes)
    air_cut = air_threshold(canon, vol.intensity)
    lungs_c: np.ndarray | None = None
    lung_future: Future | None = None
    timings["lungs"] = 0.0
    if isinstance(lungs, np.ndarray):
        if lungs.shape != vol.data.shape:
            raise InvalidImageError(
                f"lung mask shape {lungs.shape} does not match the image {vol.data.shape}"
            )
        lungs_c = to_canonical(lungs.astype(np.uint8, copy=False), r)
    elif lungs or restrict_to_lungs or spec is not None:
        job = (canon, spacing_c, vol.intensity, air_cut)
        if predictor.device.type == "cuda" and spec is None:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lung-mask")
            lung_future = pool.submit(_timed_lung_mask, *job)
            pool.shutdown(wait=False)
        else:
            lungs_c, timings["lungs"] = _timed_lung_mask(*job)
    check = None
    roi = None
    fill = -1000.0
    clutter: np.ndarray | None = None
    std: Standardization | None = None
    if spec is not None:
        check = check_lungs(lungs_c, spacing_c) if lungs_c is not None else None  # type: ignore[arg-type]
        roi = choose_roi(
            canon,
            lungs_c,
            spec=spec,
            threshold=air_cut,
            lungs_plausible=check is not None and check.plausible,
            intensity=vol.intensity,
        )
        fill = fill_value(spec, vol.intensity)
        if spec.get("clear_clutter"):
            clutter = clutter_mask(canon, lungs_c, air_cut)
        std = standardization(
            canon,
            lungs_c,
            vol.intensity,
            standardize_spec(spec),
            plausible=check is not None and check.plausible,
            spacing=spacing_c,
        )
    if auto_tta:
        from .intensity import AUTO_TTA_NOISE_HU, lung_noise_hu

        noise = lung_noise_hu(canon, lungs_c, vol.intensity) if lungs_c is not None else None
        tta_report["lung_noise_hu"] = None if noise is None else round(noise, 1)
        if noise is not None and noise > AUTO_TTA_NOISE_HU:
            predictor = copy.copy(predictor)
            predictor.tta = True
            tta_report["reason"] = (
                f"noisy scan: lung noise {noise:.0f} HU > {AUTO_TTA_NOISE_HU:.0f} HU"
            )
    tta_report["on"] = bool(predictor.tta)

    if batch_size == "auto" or batch_size is None:
        batch = auto_batch_size(predictor.device, mh, mw, predictor.autocast, native_hw=(h, w))
    else:
        batch = int(batch_size)
        if batch < 1:
            raise ValueError(f"batch_size must be >= 1 or 'auto', got {batch_size!r}")
    batch = min(batch, n)

    def runner_for(p: Predictor) -> _BatchRunner:
        return _BatchRunner(
            p,
            canon,
            intensity=vol.intensity,
            threshold=thr,
            prob_dtype=probability_dtype,
            attention=n_alpha,
            max_batch=batch,
            roi=roi,
            fill=fill,
            clutter=clutter,
            standardize=std,
        )

    def write(p: _Pending) -> None:
        pr, ma, al = _BatchRunner.collect(p)
        sl = slice(p.start, p.start + p.count)
        prob_c[sl] = pr
        mask_c[sl] = ma
        for dst, a in zip(alpha_c, al, strict=False):
            dst[sl] = a

    runner = runner_for(predictor)
    pad_shapes = predictor.compiled or predictor.device.type == "cuda"
    t0 = time.perf_counter()
    pending: _Pending | None = None
    start = 0
    while start < n:
        if should_cancel is not None and should_cancel():
            raise CancelledError("segmentation cancelled; nothing was written")
        count = min(batch, n - start)
        out_of_memory = False
        try:
            submitted = runner.submit(start, count, pad_to=batch if pad_shapes else None)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            out_of_memory = True  # handled below: here the traceback still holds the tensors
        if out_of_memory:
            failed_device = predictor.device
            free_device_memory(failed_device)
            step = oom_backoff(batch, failed_device)
            if step.action == "fail":
                raise step.error
            messages.append(step.message)
            warnings.warn(step.message, RuntimeWarning, stacklevel=2)
            if step.action == "cpu":
                if pending is not None:
                    write(pending)
                    pending = None
                # A new CPU predictor: the caller's (maybe shared) predictor is not changed.
                predictor = predictor.to_cpu()
                runner = runner_for(predictor)
                free_device_memory(failed_device)  # our buffers on the device are gone now
                batch = auto_batch_size(predictor.device, mh, mw)
                pad_shapes = predictor.compiled
            else:
                batch = step.batch_size
            continue
        if pending is not None:
            write(pending)
            yield Progress(pending.start + pending.count, n)
        pending = submitted
        start += count
    if pending is not None:
        write(pending)
        yield Progress(n, n)
    timings["inference"] = time.perf_counter() - t0
    if lung_future is not None:
        lungs_c, timings["lungs"] = lung_future.result()

    t0 = time.perf_counter()
    lung_report: dict | None = None
    lung_labels: np.ndarray | None = None
    if lungs_c is not None:
        from .lungs import hu_to_intensity
        from .postprocess import BONE_HU, EMPTY_AIR_HU, complete_lungs, restrict_to_lungs_checked

        if check is None:
            check = check_lungs(lungs_c, spacing_c)
        lung_report = {
            "status": "off",
            "reason": "",
            "right_ml": round(check.right_ml, 1),
            "left_ml": round(check.left_ml, 1),
            "notes": list(check.notes),
        }
        if restrict_to_lungs:
            if check.plausible:
                removed, reason = restrict_to_lungs_checked(
                    mask_c,
                    prob_c,
                    lungs_c,
                    spacing_c,
                    image=canon,
                    bone_threshold=hu_to_intensity(BONE_HU - 10.0, vol.intensity),
                    air_threshold=air_cut,
                    empty_threshold=hu_to_intensity(EMPTY_AIR_HU, vol.intensity),
                    # a lungs ROI is symmetric about the body's midline
                    midline=(roi.x0 + roi.x1) / 2.0
                    if roi is not None and roi.source == "lungs"
                    else None,
                )
                lung_report["removed_voxels"] = removed
            else:
                reason = f"the lung mask looks wrong ({check.reason})"
            lung_report["status"] = "skipped" if reason else "ok"
            lung_report["reason"] = reason
            if reason:
                messages.append(f"lung restriction skipped: {reason}")
        lungs_c = complete_lungs(lungs_c, mask_c, axial_axis=0)
        lung_labels = np.ascontiguousarray(from_canonical(lungs_c, r))
    if roi is not None:
        lung_report = {**(lung_report or {"status": "off", "reason": ""}), "roi": roi.as_dict()}
    if std is not None:
        lung_report = {**(lung_report or {"status": "off", "reason": ""})}
        lung_report["standardize"] = std.as_dict()
    scores = None
    if uncertainty:
        from .uncertainty import slice_uncertainty

        scores = slice_uncertainty(prob, r.axial_axis, lung_labels)
    timings["postprocess"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    return SegmentationResult(
        probability=prob,
        mask=mask,
        volume=vol,
        threshold=thr,
        lungs=None if lungs is False else lung_labels,
        uncertainty=scores,
        attention=alpha_maps if n_alpha else None,
        device=describe_device(predictor.device),
        precision=predictor.precision,
        batch_size=batch,
        model_name=predictor.name,
        timings=timings,
        messages=messages,
        lung_report=lung_report,
        tta=tta_report,
    )


def _timed_lung_mask(
    canon: np.ndarray, spacing: tuple[float, ...], intensity: str, threshold: float
) -> tuple[np.ndarray, float]:
    """Canonical lung labels ``(S, P, L)`` uint8 and the seconds they took."""
    from .lungs import GAS_MEDIAN_HU, lung_mask_canonical

    t0 = time.perf_counter()
    labels = lung_mask_canonical(
        canon,
        spacing=spacing,  # type: ignore[arg-type]
        threshold=threshold,
        gas_median=None if intensity == WINDOWED else GAS_MEDIAN_HU,
    )
    return labels, time.perf_counter() - t0


def segment(
    volume: Volume | np.ndarray,
    model: ModelLike,
    *,
    progress: Callable[[int, int], Any] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    **options: Any,
) -> SegmentationResult:
    """Run :func:`iter_segment` to the end; ``progress(done, total)`` after each batch.

    Keyword options are those of :func:`iter_segment`.
    """
    gen = iter_segment(volume, model, should_cancel=should_cancel, **options)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(step.done, step.total)
