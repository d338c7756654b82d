"""Batched whole-volume inference: batching, cancel, OOM fallback, 2D and 0..255 inputs."""

from __future__ import annotations

import tracemalloc
from typing import ClassVar

import numpy as np
import pytest
import torch

from napari_covid_seg.errors import CancelledError, DeviceError, InvalidImageError
from napari_covid_seg.inference.device import resolve_device
from napari_covid_seg.inference.engine import (
    Predictor,
    Progress,
    fuse_conv_bn,
    iter_segment,
    load_predictor,
    segment,
)
from napari_covid_seg.io import WINDOWED, Volume
from napari_covid_seg.io.phantom import make_phantom
from napari_covid_seg.models import build_model

NATIVE = {"input_size": None}


class GGOStandIn(torch.nn.Module):
    """Logit > 0 where the lung-windowed intensity is ground-glass (HU -720..-380)."""

    preprocessing: ClassVar[dict] = {"input_size": None, "n_channels": 1, "threshold": 0.5}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = (-720 + 1350) / 1500, (-380 + 1350) / 1500
        v = x[:, :1]
        return 400 * torch.minimum(v - lo, hi - v)


class OOMAbove(GGOStandIn):
    """Raises CUDA out-of-memory for batches larger than ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


class OOMOffCPU(GGOStandIn):
    """Runs out of memory on any device but the CPU, even for one slice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return super().forward(x)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(20, 96, 96), seed=1)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(
        "attention_unet", encoder_channels=(4, 8, 8, 8, 8), decoder_channels=(8, 8, 8, 8, 8)
    ).eval()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_stand_in_finds_phantom_lesions(phantom):
    img, truth = phantom
    seen: list[tuple[int, int]] = []
    res = segment(img, GGOStandIn(), batch_size=4, progress=lambda d, n: seen.append((d, n)))
    ggo = truth.extra["lesion_types"] == 1
    assert res.mask.shape == img.data.shape and res.mask.dtype == np.uint8
    assert set(np.unique(res.mask)) <= {0, 1}
    assert dice(res.mask, ggo) > 0.9
    assert res.probability.dtype == np.uint8
    assert (
        res.probability[ggo].mean() > 200 and res.probability[truth.extra["lungs"] == 0].mean() < 60
    )
    # progress: from 0, one step per batch of 4, ending at the slice count
    assert seen[0] == (0, 20) and seen[-1] == (20, 20)
    assert [d for d, _ in seen] == [0, 4, 8, 12, 16, 20]
    assert res.uncertainty.shape == (20,) and np.all(res.uncertainty >= 0)
    assert res.device.startswith("cpu") and set(res.timings) >= {"lungs", "inference", "total"}


def test_generator_yields_progress_and_returns_result(phantom):
    img, _ = phantom
    gen = iter_segment(img, GGOStandIn(), batch_size=8)
    steps = []
    with pytest.raises(StopIteration) as stop:
        while True:
            steps.append(next(gen))
    assert all(isinstance(s, Progress) for s in steps)
    assert steps[-1] == Progress(20, 20)
    assert stop.value.value.mask.shape == img.data.shape


def test_batch_size_independence(phantom, tiny_model):
    img, _ = phantom
    a = segment(img, GGOStandIn(), batch_size=1, lungs=False, restrict_to_lungs=False)
    b = segment(img, GGOStandIn(), batch_size=8, lungs=False, restrict_to_lungs=False)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.probability, b.probability)
    # a real (tiny) convolutional model, fp32: same mask, probabilities within rounding
    pp = {"input_size": 64, "threshold": 0.5}
    c = segment(
        img,
        tiny_model,
        batch_size=1,
        precision="fp32",
        preprocessing=pp,
        lungs=False,
        restrict_to_lungs=False,
    )
    d = segment(
        img,
        tiny_model,
        batch_size=8,
        precision="fp32",
        preprocessing=pp,
        lungs=False,
        restrict_to_lungs=False,
    )
    assert np.abs(c.probability.astype(int) - d.probability.astype(int)).max() <= 1
    assert np.mean(c.mask != d.mask) < 1e-4


def test_cancel_mid_volume_raises_and_returns_nothing(phantom):
    img, _ = phantom
    calls = []

    def should_cancel() -> bool:
        calls.append(1)
        return len(calls) > 2  # after two batches

    done = []
    with pytest.raises(CancelledError, match="cancelled"):
        segment(
            img,
            GGOStandIn(),
            batch_size=4,
            should_cancel=should_cancel,
            progress=lambda d, n: done.append(d),
        )
    assert len(calls) == 3 and max(done) < 20


def test_oom_halves_the_batch(phantom):
    img, _ = phantom
    predictor = load_predictor(OOMAbove(limit=2), device="cpu")
    model = predictor.model  # the predictor's own copy
    with pytest.warns(RuntimeWarning, match="batch size lowered"):
        res = segment(img, predictor, batch_size=8)
    assert res.batch_size == 2
    assert any("lowered to 4" in m for m in res.messages)
    assert any("lowered to 2" in m for m in res.messages)
    assert model.sizes[:3] == [8, 4, 2] and max(model.sizes[2:]) <= 2
    ref = segment(img, GGOStandIn(), batch_size=8)
    np.testing.assert_array_equal(res.mask, ref.mask)


def test_oom_at_batch_one_falls_back_to_cpu(phantom):
    img, _ = phantom
    # "meta" stands in for a GPU: not the CPU, and every forward there runs out of memory.
    with pytest.warns(RuntimeWarning) as caught:
        res = segment(img, OOMOffCPU(), device=torch.device("meta"), batch_size=4)
    texts = [str(w.message) for w in caught]
    assert texts[:2] == [
        "out of memory on meta: batch size lowered to 2",
        "out of memory on meta: batch size lowered to 1",
    ]
    assert "continuing on the CPU" in texts[2]
    assert res.device.startswith("cpu")
    assert any("CPU" in m for m in res.messages)
    ref = segment(img, GGOStandIn(), batch_size=4)
    np.testing.assert_array_equal(res.mask, ref.mask)


def test_oom_on_cpu_at_batch_one_is_a_clear_error(phantom):
    img, _ = phantom
    from napari_covid_seg.errors import CovidSegError

    with pytest.warns(RuntimeWarning), pytest.raises(CovidSegError, match="out of memory"):
        segment(img, OOMAbove(limit=0), batch_size=2)


def test_2d_slice_input(phantom):
    img, _ = phantom
    slice_hu = img.data[10]  # (y, x) HU, as a plain array
    res = segment(slice_hu, GGOStandIn())
    assert res.mask.shape == (1, 96, 96)
    ref = segment(img, GGOStandIn())
    np.testing.assert_array_equal(res.mask[0], ref.mask[10])
    assert res.uncertainty.shape == (1,)


def test_windowed_0_255_input_matches_hu(phantom):
    img, _ = phantom
    v = np.clip((img.data.astype(np.float32) + 1350.0) * 255.0 / 1500.0, 0, 255)
    win = Volume(data=np.rint(v).astype(np.uint8), affine=img.affine, intensity=WINDOWED)
    a = segment(img, GGOStandIn())
    b = segment(win, GGOStandIn())
    assert dice(a.mask, b.mask) > 0.97
    # the lung masks agree too (threshold converted to 0..255 units)
    assert dice(a.lungs, b.lungs) > 0.98


class DenseStandIn(torch.nn.Module):
    """Logit > 0 above -400 HU (tissue, bone, lesions): a monotone edge survives resizing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 50 * (x[:, :1] - (-400 + 1350) / 1500)


def test_resized_inference_and_threshold(phantom):
    img, _ = phantom
    dense = img.data > -400
    for size in (64, 160):  # down- and up-sampled slices, back to native
        res = segment(
            img,
            DenseStandIn(),
            preprocessing={"input_size": size, "n_channels": 3},
            restrict_to_lungs=False,
            lungs=False,
        )
        assert res.mask.shape == img.data.shape
        assert dice(res.mask, dense) > 0.95
    model = GGOStandIn()
    low = segment(img, model, threshold=0.05, restrict_to_lungs=False)
    high = segment(img, model, threshold=0.95, restrict_to_lungs=False)
    assert low.threshold == 0.05 and low.mask.sum() > high.mask.sum()


def test_float16_probabilities_and_attention(phantom, tiny_model):
    img, _ = phantom
    res = segment(
        img,
        tiny_model,
        preprocessing={"input_size": 64},
        probability_dtype="float16",
        attention=True,
        lungs=False,
        restrict_to_lungs=False,
        precision="fp32",
    )
    assert res.probability.dtype == np.float16
    assert 0.0 <= float(res.probability.min()) and float(res.probability.max()) <= 1.0
    assert res.lungs is None
    np.testing.assert_array_equal(res.mask, (res.probability.astype(np.float32) > 0.5))
    assert len(res.attention) == 2
    for a in res.attention:
        assert a.shape == img.data.shape and a.dtype == np.uint8 and a.max() > 0
    none = segment(img, GGOStandIn(), attention=True)
    assert none.attention is None  # no gates, no maps


def test_host_memory_stays_bounded():
    data = make_phantom(shape=(64, 128, 128), seed=2)[0]
    float_copy = data.data.size * 4
    tracemalloc.start()
    try:
        segment(
            data,
            GGOStandIn(),
            batch_size=8,
            lungs=False,
            restrict_to_lungs=False,
            uncertainty=False,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = data.data.size * 2  # uint8 probability + uint8 mask
    assert peak < outputs + float_copy // 2, (peak, outputs, float_copy)


def test_fused_model_matches(tiny_model):
    import copy

    x = torch.rand(2, 3, 64, 64)
    model = copy.deepcopy(tiny_model)
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    with torch.no_grad():
        ref = model(x)
        fused = fuse_conv_bn(copy.deepcopy(model))
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        torch.testing.assert_close(fused(x), ref, atol=1e-4, rtol=1e-4)


def test_predictor_leaves_the_callers_model_alone(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    p = load_predictor(tiny_model, device="cpu")
    assert isinstance(p, Predictor) and p.device.type == "cpu"
    assert load_predictor(p) is p
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny_model.modules())


def test_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="CUDA was requested"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="Unknown device"):
        resolve_device("tpu-please")
    with pytest.raises(DeviceError):
        segment(np.zeros((64, 64), np.int16), GGOStandIn(), device="cuda")


def test_bad_inputs():
    with pytest.raises(InvalidImageError, match="label mask"):
        segment(Volume(np.zeros((2, 32, 32), np.uint8), np.eye(4), is_mask=True), GGOStandIn())
    with pytest.raises(InvalidImageError):
        segment(np.zeros((2, 2, 2, 2)), GGOStandIn())
    with pytest.raises(TypeError, match="cannot segment with"):
        segment(np.zeros((32, 32)), object())


def test_double_buffered_path_matches_the_plain_one(phantom, tiny_model, monkeypatch):
    """The CUDA batch path (two host buffers in turn, deferred writes) on the CPU."""
    from napari_covid_seg.inference.engine import PIPELINE_ENV

    img, _ = phantom
    sagittal = Volume(
        data=np.ascontiguousarray(np.transpose(img.data, (2, 0, 1))),
        affine=img.affine[:, [1, 2, 0, 3]],  # new (i, j, k) = old (j, k, i): same voxels
        intensity=img.intensity,
    )
    assert sagittal.reorientation.axial_axis == 1
    kw = {"batch_size": 3, "attention": True, "precision": "fp32", "lungs": False}
    kw |= {"restrict_to_lungs": False, "preprocessing": {"input_size": 64}}
    plain = segment(sagittal, tiny_model, **kw)
    monkeypatch.setenv(PIPELINE_ENV, "1")
    seen = []
    piped = segment(sagittal, tiny_model, progress=lambda d, n: seen.append(d), **kw)
    np.testing.assert_array_equal(piped.probability, plain.probability)
    np.testing.assert_array_equal(piped.mask, plain.mask)
    for a, b in zip(piped.attention, plain.attention, strict=True):
        np.testing.assert_array_equal(a, b)
    assert seen == [0, 3, 6, 9, 12, 15, 18, 20]
    # and it agrees with the LPS-stored original, voxel for voxel
    ref = segment(img, tiny_model, **kw)
    np.testing.assert_array_equal(np.transpose(ref.probability, (2, 0, 1)), plain.probability)


def test_auto_batch_size(monkeypatch):
    from napari_covid_seg.inference.device import auto_batch_size

    cpu = torch.device("cpu")
    assert auto_batch_size(cpu, 256, 256) == 8
    assert auto_batch_size(cpu, 512, 512) == 4
    assert auto_batch_size(cpu, 1024, 1024) == 1
    # CUDA: from free memory (mocked; no GPU needed)
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free[0], 80 * gib))
    cuda = torch.device("cuda", 0)
    free = [70 * gib]
    assert auto_batch_size(cuda, 512, 512, torch.bfloat16) == 64  # capped
    free = [2 * gib]
    small = auto_batch_size(cuda, 512, 512, torch.bfloat16, native_hw=(512, 512))
    assert 1 <= small < 64
    assert auto_batch_size(cuda, 512, 512, None) <= small  # fp32 needs more per slice
    free = [1024]
    assert auto_batch_size(cuda, 512, 512, torch.bfloat16) == 1
