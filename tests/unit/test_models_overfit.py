"""Every architecture can learn: it overfits two synthetic image/mask pairs to Dice > 0.9."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_covid_seg.models import MODEL_NAMES, build_model

STEPS = 20


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: faster than oversubscribed threads on a shared 2-core runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def two_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """A bright disc and a bright square on a noisy gray background, 64x64, 3 channels."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    disc = ((yy - 30) ** 2 + (xx - 34) ** 2) < 20**2
    square = (yy >= 10) & (yy < 50) & (xx >= 14) & (xx < 54)
    masks = torch.stack([disc, square]).float()[:, None]
    noise = 0.05 * torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    images = (0.3 + 0.4 * masks + noise).clamp(0, 1).repeat(1, 3, 1, 1)
    return images, masks


def dice(logits: torch.Tensor, masks: torch.Tensor) -> float:
    pred = (logits > 0).float()
    return float(2 * (pred * masks).sum() / (pred.sum() + masks.sum()))


def bce_dice(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    soft_dice = (2 * (p * masks).sum() + 1) / (p.sum() + masks.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, masks) + 1 - soft_dice


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_overfits_two_pairs(name: str) -> None:
    torch.manual_seed(0)
    images, masks = two_pairs()
    model = build_model(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        start = dice(model(images), masks)
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = bce_dice(model(images), masks)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        trained = dice(model(images), masks)
    assert trained > 0.9, (name, start, trained)
    assert trained > start + 0.2, (name, start, trained)

    # eval mode agrees once BatchNorm statistics are re-estimated on the same data
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    with torch.no_grad():
        model(images)
        model.eval()
        assert dice(model(images), masks) > 0.85
