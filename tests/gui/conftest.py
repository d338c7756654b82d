"""GUI tests run in a real napari under Xvfb (``xvfb-run -a pytest``)."""

from __future__ import annotations

import os

import numpy as np
import pytest

#: Model input size of the test model (the sample CT's 256 px slices are resized to it).
TINY_INPUT = 64


@pytest.fixture(autouse=True, scope="session")
def _require_display():
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        pytest.fail("GUI tests need a display: run the suite as `xvfb-run -a pytest` (see README)")


def _training_slices(size: int, seeds: tuple[int, ...]) -> tuple:
    """Canonical axial phantom slices resized like inference does: (N, 3, S, S), (N, 1, S, S)."""
    import torch
    import torch.nn.functional as F

    from napari_covid_seg.inference.preprocess import normalize
    from napari_covid_seg.io.orientation import to_canonical
    from napari_covid_seg.io.phantom import make_phantom

    xs, ys = [], []
    for seed in seeds:
        image, truth = make_phantom(shape=(16, 256, 256), seed=seed)
        r = image.reorientation
        x = torch.from_numpy(np.ascontiguousarray(normalize(to_canonical(image.data, r))))
        y = torch.from_numpy(np.ascontiguousarray(to_canonical(truth.data, r)).astype(np.float32))
        kw = {"size": (size, size), "mode": "bilinear", "align_corners": False, "antialias": True}
        xs.append(F.interpolate(x[:, None], **kw))
        ys.append((F.interpolate(y[:, None], **kw) >= 0.5).float())
    x, y = torch.cat(xs), torch.cat(ys)
    keep = (y.flatten(1).sum(1) > 0) | (torch.arange(len(y)) % 3 == 0)
    return x[keep].expand(-1, 3, -1, -1).contiguous(), y[keep]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A small attention U-Net trained for 50 Adam steps on phantom slices; its folder.

    Trained on phantoms with other seeds than the sample CT (seed 0), at 64 px
    (the sample's 256 px slices are resized like the engine does), so it must
    generalise to find the sample's lesions. BatchNorm statistics are
    recomputed after training (50 steps are too few for the running averages).
    About 10 s of CPU time.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: OpenMP threads cost more than they give
    try:
        return _train_tiny_model(tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _train_tiny_model(tmp_path_factory):
    import torch

    from napari_covid_seg.models import build_model
    from napari_covid_seg.models.checkpoint import save_model_version
    from napari_covid_seg.models.config import default_preprocessing

    torch.manual_seed(0)
    x, y = _training_slices(TINY_INPUT, seeds=(1, 2))
    model = build_model(
        "attention_unet", encoder_channels=(16, 32, 32, 32, 32), decoder_channels=(32,) * 5
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    pos_weight = torch.tensor(2.0)
    model.train()
    for _ in range(50):
        idx = torch.randint(0, len(x), (8,), generator=gen)
        logits = model(x[idx])
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * y[idx]).sum() + 1) / (p.sum() + y[idx].sum() + 1)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y[idx], pos_weight=pos_weight
        )
        opt.zero_grad()
        (bce + dice).backward()
        opt.step()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the passes below
    with torch.no_grad():
        for start in range(0, len(x), 8):
            model(x[start : start + 8])
    model.eval()
    preprocessing = default_preprocessing()
    preprocessing["input_size"] = TINY_INPUT
    folder = tmp_path_factory.mktemp("models") / "tiny-phantom"
    return save_model_version(
        folder,
        model,
        preprocessing=preprocessing,
        name="tiny-phantom",
        description="test model trained on phantom slices",
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0
