"""The device layer: one place for device, precision, memory format and out-of-memory policy.

Used alike by inference (:mod:`.engine`), training (:mod:`..training.trainer`)
and the fine-tune worker.

* :func:`resolve_device` turns ``"auto" | "cpu" | "cuda[:N]" | "mps"`` into a
  ``torch.device`` (auto: CUDA > MPS > CPU) or raises
  :class:`~napari_covid_seg.errors.DeviceError` with a message that says what
  to do.
* :func:`native_bf16` / :func:`autocast_dtype` / :func:`training_dtype` pick
  the precision: bf16 only where it is native (CUDA compute capability >= 8.0,
  i.e. Ampere and newer; CPUs with ``avx512_bf16`` / ``amx_bf16``, twice the
  fp32 speed on a 2-core EPYC, see docs/benchmarks.md); fp16 on older GPUs
  (with a :func:`grad_scaler` when training); fp32 elsewhere.
  ``torch.cuda.is_bf16_supported()`` is not used: it also counts emulated
  bf16, which is slow on T4/V100.
* :func:`memory_format`: channels_last (NHWC) or contiguous.
* :func:`auto_batch_size` sizes a batch from free GPU memory, or returns a
  fixed CPU default.
* :func:`is_out_of_memory`, :func:`oom_backoff` and :func:`free_device_memory`:
  detect an out-of-memory error, decide the next step (halve the batch, move
  to the CPU, or give up with one clear message), and release cached memory
  (call it *after* leaving the ``except`` block: the traceback holds tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..errors import DeviceError, OutOfMemoryError

if TYPE_CHECKING:
    import torch

#: Slices per CPU batch: at most 8, and at most 4 of 512 x 512 (bounds memory;
#: on 2 cores batches of 2 ran ~40 % slower at 512, 4 and 8 alike).
CPU_BATCH_SIZE = 8
CPU_BATCH_PIXELS = 4 * 512 * 512
#: Largest automatic batch on a GPU.
MAX_GPU_BATCH_SIZE = 64
#: Approximate live bytes per pixel of the model input (activations, skips,
#: output buffers) at 16-bit precision during inference of ResAttUnet, with
#: head room; measured peak is about 110 bytes/pixel.
BYTES_PER_PIXEL_16BIT = 160
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Training ``amp`` settings (``off`` = fp32).
AMP_SETTINGS = ("auto", "off", "bf16", "fp16")
#: CUDA compute capability from which bf16 is native (Ampere: A100, RTX 30xx; H100...).
BF16_MIN_CAPABILITY = (8, 0)


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device to run on; ``"auto"`` (or None) picks CUDA > MPS > CPU.

    Raises:
        DeviceError: CUDA/MPS asked for but not available, or an unknown name.
    """
    import torch

    if isinstance(device, torch.device):
        dev = device
    else:
        text = "auto" if device is None else str(device).strip().lower()
        if text == "auto":
            if cuda_available():
                return torch.device("cuda", torch.cuda.current_device())
            if mps_available():
                return torch.device("mps")
            return torch.device("cpu")
        if text == "gpu":
            text = "cuda"
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise DeviceError(
                f"Unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps"
            ) from None
    if dev.type == "cuda":
        if not cuda_available():
            build = torch.__version__
            raise DeviceError(
                f"CUDA was requested but PyTorch {build} sees no CUDA GPU on this machine. "
                "Use --device cpu (or auto), or install a CUDA build of PyTorch and an "
                "NVIDIA driver."
            )
        count = torch.cuda.device_count()
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= count:
            raise DeviceError(
                f"GPU cuda:{index} does not exist; this machine has {count} CUDA GPU(s) "
                f"(cuda:0..cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    if dev.type == "mps" and not mps_available():
        raise DeviceError(
            "Apple MPS was requested but is not available (needs macOS 12.3+ on Apple "
            "silicon and an MPS build of PyTorch); use --device cpu or auto"
        )
    return dev


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 / AMX on x86, BF16 on ARM)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def cuda_capability(device: torch.device | int | None = None) -> tuple[int, int]:
    """``(major, minor)`` compute capability of a CUDA device."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (not emulated).

    CUDA: compute capability >= 8.0 (ROCm: what torch reports without
    emulation); CPU: AVX512-BF16 / AMX / ARM BF16; anything else: False.
    """
    import torch

    if device.type == "cuda":
        if getattr(torch.version, "hip", None):
            try:
                return bool(torch.cuda.is_bf16_supported(including_emulation=False))
            except TypeError:  # pragma: no cover - torch < 2.3
                return bool(torch.cuda.is_bf16_supported())
        return cuda_capability(device) >= BF16_MIN_CAPABILITY
    if device.type == "cpu":
        return cpu_supports_bf16()
    return False


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Inference autocast dtype for ``precision`` on ``device`` (None means plain fp32).

    ``"auto"``: bf16 where it is native (CUDA capability >= 8.0, bf16 CPUs),
    fp16 on older CUDA GPUs (T4, V100: tensor cores, no native bf16), fp32
    otherwise (MPS included).
    """
    import torch

    precision = str(precision).lower()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if native_bf16(device):
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    return None


def training_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Training autocast dtype for an ``amp`` setting (``auto``, ``off``, ``bf16``, ``fp16``).

    ``"auto"`` is :func:`autocast_dtype`'s choice: bf16 where native, fp16 (with a
    :func:`grad_scaler`) on older CUDA GPUs, fp32 elsewhere.
    """
    amp = str(amp).lower()
    if amp not in AMP_SETTINGS:
        raise ValueError(f"amp must be one of {', '.join(AMP_SETTINGS)}, got {amp!r}")
    return autocast_dtype(device, "fp32" if amp == "off" else amp)


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> Any:
    """A ``torch.amp.GradScaler`` for fp16 training on CUDA, else None (bf16/fp32 need none)."""
    import torch

    if dtype is not torch.float16 or device.type != "cuda":
        return None
    return torch.amp.GradScaler("cuda")


def memory_format(channels_last: bool) -> torch.memory_format:
    """``torch.channels_last`` (NHWC: faster convolutions on CPU and GPU) or contiguous."""
    import torch

    return torch.channels_last if channels_last else torch.contiguous_format


def precision_name(dtype: torch.dtype | None) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``."""
    import torch

    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def auto_batch_size(
    device: torch.device,
    height: int,
    width: int,
    dtype: torch.dtype | None = None,
    *,
    native_hw: tuple[int, int] | None = None,
) -> int:
    """Slices per batch: from free GPU memory on CUDA, else 8 slices of 256 x 256 pixels
    (4 of 512 x 512) on the CPU and other devices.

    Args:
        height, width: model input size of one slice.
        dtype: autocast dtype (None = fp32 doubles the estimate).
        native_hw: native slice size (the outputs are resized back to it).
    """
    import torch

    if device.type != "cuda":
        return max(1, min(CPU_BATCH_SIZE, CPU_BATCH_PIXELS // max(1, height * width)))
    free, _total = torch.cuda.mem_get_info(device)
    per_pixel = BYTES_PER_PIXEL_16BIT * (1 if dtype in (torch.bfloat16, torch.float16) else 2)
    per_slice = per_pixel * height * width
    if native_hw is not None:
        per_slice += 16 * native_hw[0] * native_hw[1]  # fp32 logits/probabilities at native size
    budget = 0.5 * free  # the rest: cuDNN workspaces, the allocator, other processes
    n = int(budget // max(per_slice, 1))
    return max(1, min(MAX_GPU_BATCH_SIZE, n))


def describe_device(device: torch.device) -> str:
    """Human-readable device name, e.g. ``"cuda:0 (NVIDIA H100)"`` or ``"cpu (2 threads)"``."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        extra = ", bf16" if cpu_supports_bf16() else ""
        return f"cpu ({torch.get_num_threads()} threads{extra})"
    return str(device)


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA/MPS/CPU out-of-memory errors (also when raised as the cause of another).

    Does not import torch: ``torch.OutOfMemoryError`` is recognised by its name.
    """
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, MemoryError):
            return True
        if any(t.__name__ == "OutOfMemoryError" for t in type(e).__mro__):
            return True
        if isinstance(e, RuntimeError) and "out of memory" in str(e).lower():
            return True
        e = e.__cause__
    return False


@dataclass(frozen=True)
class OOMStep:
    """What to do after running out of memory at some batch size.

    ``action``: ``"retry"`` with :attr:`batch_size`, ``"cpu"`` (move the model
    to the CPU and go on), or ``"fail"`` (raise :attr:`error`).
    """

    action: str
    batch_size: int
    message: str

    @property
    def error(self) -> OutOfMemoryError:
        return OutOfMemoryError(self.message)


def oom_backoff(batch_size: int, device: torch.device, *, cpu_fallback: bool = True) -> OOMStep:
    """The next step after an out-of-memory error at ``batch_size`` on ``device``.

    Halve the batch while it is above one; at one slice move to the CPU (when
    ``cpu_fallback`` and not there already); on the CPU give up with a message
    that says what to do.
    """
    if batch_size > 1:
        new = max(1, batch_size // 2)
        return OOMStep("retry", new, f"out of memory on {device}: batch size lowered to {new}")
    if device.type != "cpu" and cpu_fallback:
        return OOMStep(
            "cpu",
            1,
            f"out of memory on {device} even with one slice per batch: "
            "continuing on the CPU (slower)",
        )
    where = "the CPU" if device.type == "cpu" else str(device)
    return OOMStep(
        "fail",
        1,
        f"out of memory on {where} even with one slice per batch; close other "
        "programs or segment a smaller (cropped or downsampled) image",
    )


def free_device_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage and return cached CUDA blocks to the driver.

    Call it outside the ``except`` block that caught the out-of-memory error:
    until that block ends, the traceback keeps the failed batch's tensors alive.
    """
    import gc

    gc.collect()
    import torch

    kind = device.type if hasattr(device, "type") else str(device or "cuda").split(":")[0]
    if kind == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif kind == "mps":
        mps = getattr(torch, "mps", None)
        if mps is not None and hasattr(mps, "empty_cache"):
            mps.empty_cache()
