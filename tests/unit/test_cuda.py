"""The CUDA path on a real GPU (skipped without one): precision, OOM back-off, cohort, trainer.

Run with ``pytest -m cuda`` (``benchmarks/gpu_check.sh`` does); every test is
small enough for any GPU and takes seconds.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

from napari_covid_seg.inference import device as devices  # noqa: E402
from napari_covid_seg.inference import engine  # noqa: E402
from napari_covid_seg.io.phantom import make_phantom  # noqa: E402


class GGOStandIn(torch.nn.Module):
    """Logit > 0 where the lung-windowed intensity is ground-glass (HU -720..-380)."""

    preprocessing = {"input_size": None, "n_channels": 1, "threshold": 0.5}  # noqa: RUF012

    def __init__(self, limit: int = 1 << 30, cpu_only: bool = False) -> None:
        super().__init__()
        self.limit, self.cpu_only = limit, cpu_only
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit or (self.cpu_only and x.device.type != "cpu"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4 GiB")
        lo, hi = (-720 + 1350) / 1500, (-380 + 1350) / 1500
        v = x[:, :1].float()
        return 400 * torch.minimum(v - lo, hi - v)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(12, 128, 128), seed=3)


def test_precision_follows_compute_capability():
    dev = devices.resolve_device("cuda")
    major, minor = torch.cuda.get_device_capability(dev)
    want = torch.bfloat16 if (major, minor) >= (8, 0) else torch.float16
    assert devices.autocast_dtype(dev, "auto") is want
    assert devices.training_dtype("auto", dev) is want
    assert (devices.grad_scaler(want, dev) is None) is (want is torch.bfloat16)
    assert "cuda" in devices.describe_device(dev)


def test_gpu_mask_matches_cpu_mask(phantom):
    img, _ = phantom
    gpu = engine.segment(img, GGOStandIn(), device="cuda", batch_size=4)
    cpu = engine.segment(img, GGOStandIn(), device="cpu", batch_size=4)
    assert gpu.device.startswith("cuda") and gpu.mask.sum() > 0
    np.testing.assert_array_equal(gpu.mask, cpu.mask)


def test_real_model_bf16_or_fp16_agrees_with_fp32(phantom):
    from napari_covid_seg.models import build_model

    img, _ = phantom
    torch.manual_seed(0)
    model = build_model("res_att_unet", encoder_weights="none").eval()
    pp = {"input_size": 128, "threshold": 0.5}
    p32 = engine.segment(img, model, device="cuda", precision="fp32", preprocessing=pp)
    auto = engine.segment(img, model, device="cuda", precision="auto", preprocessing=pp)
    a, b = p32.probability.astype(np.int16), auto.probability.astype(np.int16)
    assert auto.precision in ("bf16", "fp16") and np.abs(a - b).mean() < 6.0


def test_oom_backoff_on_the_gpu_halves_then_falls_back_without_touching_the_callers(phantom):
    img, _ = phantom
    model = GGOStandIn(limit=2)
    with pytest.warns(RuntimeWarning, match="batch size lowered"):
        res = engine.segment(img, model, device="cuda", batch_size=8)
    assert res.batch_size == 2 and res.device.startswith("cuda")
    mine = engine.Predictor(GGOStandIn(cpu_only=True), device="cuda")
    before = mine.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = engine.segment(img, mine, batch_size=4)
    assert res.device.startswith("cpu")
    assert mine.device.type == "cuda" and mine.model is before


def test_trainer_step_on_the_gpu(tmp_path):
    from napari_covid_seg.training.trainer import Trainer
    from tests.unit._ddp_child import config, tiny_slices

    cfg = config(1, 4).replace(amp="auto", device="cuda")
    trainer = Trainer(cfg, out_dir=tmp_path, data=tiny_slices(10), register=False)
    res = trainer.fit()
    assert res.epochs_run == 1 and np.isfinite(res.history[0]["train_loss"])
    assert trainer.device.type == "cuda" and trainer.amp_dtype is not None


def test_cohort_segment_on_the_gpu(tmp_path, capsys):
    from napari_covid_seg import cli
    from napari_covid_seg.io import write_volume
    from napari_covid_seg.models import build_model
    from napari_covid_seg.models.checkpoint import save_model_version

    model = build_model("unet", encoder_channels=(4, 8, 8, 8, 8), decoder_channels=(8, 8, 8, 8, 8))
    mdir = save_model_version(tmp_path / "m", model, preprocessing={"input_size": 64}, name="t")
    folder = tmp_path / "in"
    for k in range(3):
        img, _ = make_phantom(shape=(6, 64, 64), seed=k)
        write_volume(folder / f"c{k}.nii.gz", img.data, like=img)
    out = tmp_path / "out"
    assert (
        cli.main(
            ["segment", str(folder), "-o", str(out), "--model", str(mdir), "-q", "--device", "cuda"]
        )
        == 0
    )
    rows = json.loads((out / "segment_report.json").read_text())["cases"]
    assert len(rows) == 3 and all(r["device"].startswith("cuda") for r in rows)
    assert all(Path(r["mask"]).is_file() for r in rows)
