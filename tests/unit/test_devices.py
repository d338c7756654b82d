"""The device layer: precision by (simulated) capability, OOM detection and back-off."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_covid_seg.errors import DeviceError, OutOfMemoryError  # noqa: E402
from napari_covid_seg.inference import device as devices  # noqa: E402
from napari_covid_seg.inference import engine  # noqa: E402

CUDA0 = torch.device("cuda", 0)
CPU = torch.device("cpu")


@pytest.fixture
def gpu(monkeypatch):
    """Simulate a CUDA GPU of a given compute capability; torch claims bf16 (emulation)."""

    def make(capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        monkeypatch.setattr(torch.version, "hip", None)

    return make


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((6, 0), "fp16"), ((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")],
)
def test_auto_precision_on_gpus(gpu, capability, expected):
    # P100/V100/T4 only emulate bf16 (slow) although torch.cuda.is_bf16_supported() says True
    gpu(capability)
    assert devices.native_bf16(CUDA0) is (expected == "bf16")
    assert devices.precision_name(devices.autocast_dtype(CUDA0, "auto")) == expected
    assert devices.precision_name(devices.training_dtype("auto", CUDA0)) == expected
    assert devices.autocast_dtype(CUDA0, "fp32") is None
    assert devices.autocast_dtype(CUDA0, "bf16") is torch.bfloat16  # asked for: obeyed


def test_fp16_training_gets_a_grad_scaler(gpu):
    gpu((7, 5))
    dtype = devices.training_dtype("auto", CUDA0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on a CPU-only machine
        assert isinstance(devices.grad_scaler(dtype, CUDA0), torch.amp.GradScaler)
    assert devices.grad_scaler(torch.bfloat16, CUDA0) is None
    assert devices.grad_scaler(None, CUDA0) is None
    assert devices.grad_scaler(torch.float16, CPU) is None
    assert devices.training_dtype("off", CUDA0) is None
    with pytest.raises(ValueError, match="amp must be one of"):
        devices.training_dtype("fp8", CUDA0)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_cpus(monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: native)
    assert devices.autocast_dtype(CPU, "auto") is (torch.bfloat16 if native else None)
    assert devices.training_dtype("auto", CPU) is (torch.bfloat16 if native else None)
    assert devices.autocast_dtype(torch.device("mps"), "auto") is None


def test_trainer_and_engine_share_the_choice(gpu, monkeypatch):
    from napari_covid_seg.training import trainer

    gpu((7, 0))
    assert trainer.use_bf16("auto", CUDA0) is False  # was True: emulated bf16 on a V100
    gpu((8, 6))
    assert trainer.use_bf16("auto", CUDA0) is True
    assert trainer.cpu_has_fast_bf16 is devices.cpu_supports_bf16
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA was requested"):
        trainer.resolve_device("cuda")
    assert trainer.resolve_device("auto") == CPU


def test_memory_format():
    assert devices.memory_format(True) is torch.channels_last
    assert devices.memory_format(False) is torch.contiguous_format


def test_out_of_memory_detection_needs_no_torch_types():
    assert devices.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    assert devices.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert devices.is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert devices.is_out_of_memory(MemoryError())
    assert devices.is_out_of_memory(OutOfMemoryError("out of memory on cuda:0"))
    try:
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        except Exception as inner:
            raise ValueError("wrapped") from inner
    except ValueError as outer:
        assert devices.is_out_of_memory(outer)
    assert not devices.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not devices.is_out_of_memory(DeviceError("no GPU"))


def test_oom_backoff_halves_then_moves_to_the_cpu_then_fails():
    steps, batch, device = [], 8, CUDA0
    while True:
        step = devices.oom_backoff(batch, device)
        steps.append((step.action, step.batch_size))
        if step.action == "fail":
            break
        if step.action == "cpu":
            device = CPU
        batch = step.batch_size
    assert steps == [("retry", 4), ("retry", 2), ("retry", 1), ("cpu", 1), ("fail", 1)]
    last = devices.oom_backoff(1, CPU)
    assert isinstance(last.error, OutOfMemoryError) and "on the CPU" in str(last.error)
    assert devices.oom_backoff(1, CUDA0, cpu_fallback=False).action == "fail"


class StandIn(torch.nn.Module):
    """Logit +10 everywhere; out of memory off the CPU, or above ``limit`` slices."""

    preprocessing = {"input_size": None, "n_channels": 1, "threshold": 0.5}  # noqa: RUF012

    def __init__(self, limit: int = 1 << 30) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return torch.full_like(x[:, :1], 10.0)


def test_cpu_fallback_returns_a_new_predictor_and_leaves_the_callers(monkeypatch):
    vol = np.full((6, 32, 32), -500, np.int16)
    mine = engine.Predictor(StandIn(), device=torch.device("meta"), precision="fp32")
    model_before = mine.model
    freed = []

    def record_free(device=None):
        # outside the except block: no exception (and its traceback's tensors) alive
        freed.append((str(device), sys.exc_info()[0]))

    monkeypatch.setattr(engine, "free_device_memory", record_free)
    with pytest.warns(RuntimeWarning, match="continuing on the CPU"):
        res = engine.segment(vol, mine, batch_size=2, lungs=False, restrict_to_lungs=False)
    assert res.device.startswith("cpu") and res.mask.all()
    assert mine.device.type == "meta" and mine.model is model_before  # the caller's is intact
    assert freed and all(exc is None for _, exc in freed)
    assert {d for d, _ in freed} == {"meta"}
    new = mine.to_cpu()
    assert new is not mine and new.device == CPU and new.precision == mine.precision


def test_batch_backoff_frees_memory_outside_the_except_block(monkeypatch):
    vol = np.full((8, 32, 32), -500, np.int16)
    freed = []
    monkeypatch.setattr(engine, "free_device_memory", lambda d=None: freed.append(sys.exc_info()))
    with pytest.warns(RuntimeWarning, match="batch size lowered to 2"):
        res = engine.segment(
            vol, StandIn(limit=2), device="cpu", batch_size=8, lungs=False, restrict_to_lungs=False
        )
    assert res.batch_size == 2 and len(freed) == 2
    assert all(info == (None, None, None) for info in freed)
    with pytest.warns(RuntimeWarning), pytest.raises(OutOfMemoryError, match="out of memory"):
        engine.segment(vol, StandIn(limit=0), device="cpu", batch_size=2, lungs=False)


def test_trainer_turns_out_of_memory_into_one_clear_error(tmp_path, monkeypatch):
    from napari_covid_seg.training.trainer import Trainer
    from tests.unit._ddp_child import config, tiny_slices

    trainer = Trainer(config(1, 4), out_dir=tmp_path, data=tiny_slices(6), register=False)
    freed = []
    monkeypatch.setattr(devices, "free_device_memory", lambda d=None: freed.append(sys.exc_info()))

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")

    monkeypatch.setattr(Trainer, "_step", oom)
    with pytest.raises(OutOfMemoryError, match="lower the batch size"):
        trainer.fit()
    assert freed == [(None, None, None)]


def test_fp16_training_steps_through_the_scaler(tmp_path, monkeypatch):
    """The GradScaler path (fp16 on pre-Ampere GPUs), exercised on the CPU."""
    from napari_covid_seg.training.trainer import Trainer
    from tests.unit._ddp_child import config, tiny_slices

    scalers = []

    def cpu_scaler(dtype, device):
        scalers.append(torch.amp.GradScaler("cpu", init_scale=2.0**8))
        return scalers[-1]

    monkeypatch.setattr(devices, "grad_scaler", cpu_scaler)
    cfg = config(1, 4).replace(amp="fp16", grad_clip=1.0)
    res = Trainer(cfg, out_dir=tmp_path, data=tiny_slices(8), register=False).fit()
    assert res.epochs_run == 1 and np.isfinite(res.history[0]["train_loss"])
    state = torch.load(tmp_path / "last" / "state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0
