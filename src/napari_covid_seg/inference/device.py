"""Compute device, precision and batch size for inference.

* :func:`resolve_device` turns ``"auto" | "cpu" | "cuda[:N]" | "mps"`` into a
  ``torch.device`` (auto: CUDA > MPS > CPU) or raises
  :class:`~napari_covid_seg.errors.DeviceError` with a message that says what
  to do.
* :func:`autocast_dtype` picks the autocast precision: bf16 on CUDA (fp16 on
  GPUs without bf16), bf16 on CPUs with native bf16 instructions
  (``avx512_bf16`` / ``amx_bf16``; twice the fp32 speed on a 2-core EPYC, see
  docs/benchmarks.md), fp32 elsewhere.
* :func:`auto_batch_size` sizes a batch from free GPU memory, or returns a
  fixed CPU default.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from ..errors import DeviceError

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


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (None means plain fp32).

    ``"auto"``: bf16 on CUDA GPUs that support it (else fp16), bf16 on CPUs
    with native bf16, fp32 otherwise (MPS included).
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
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


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
    """True for CUDA/MPS/CPU out-of-memory errors."""
    import torch

    if isinstance(err, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
