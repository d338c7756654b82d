"""Batch augmentation for CT slices, deterministic given a ``torch.Generator``.

Geometric (image and mask together): left-right / up-down flips, 90-degree
rotations, a small random affine (rotation, zoom, shift; bilinear, masks
re-thresholded at 0.5). Intensity (image only, values stay in [0, 1]): gamma,
brightness offset, contrast around the slice mean, Gaussian noise.

All random numbers come from the given generator (no global RNG state), so a
run is reproducible from its seed and resumable at an epoch boundary.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def _coin(p: float, n: int, g: torch.Generator) -> torch.Tensor:
    """``(n,)`` bool: True with probability p (always draws, to keep streams aligned)."""
    return torch.rand(n, generator=g) < float(p)


def _uniform(lo: float, hi: float, n: int, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _select(flag: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(flag.view(-1, 1, 1, 1).to(a.device), a, b)


def augment_batch(
    x: torch.Tensor, y: torch.Tensor, params: dict[str, Any], g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment one batch.

    Args:
        x: ``(N, 1, H, W)`` float32 images in [0, 1].
        y: ``(N, 1, H, W)`` float32 masks in {0, 1}.
        params: merged augmentation settings (see ``config.DEFAULT_AUGMENT``).
        g: CPU generator all random draws come from.
    Returns:
        Augmented ``(x, y)``, same shapes and dtypes.
    """
    n = x.shape[0]
    p = params
    # flips
    flag = _coin(p["flip_lr"], n, g)
    x, y = _select(flag, x.flip(-1), x), _select(flag, y.flip(-1), y)
    flag = _coin(p["flip_ud"], n, g)
    x, y = _select(flag, x.flip(-2), x), _select(flag, y.flip(-2), y)
    # 90-degree rotations (square slices only)
    flag = _coin(p["rot90"], n, g)
    ks = torch.randint(1, 4, (n,), generator=g)
    if x.shape[-1] == x.shape[-2] and bool(flag.any()):
        xs, ys = list(x.unbind(0)), list(y.unbind(0))
        for i in torch.nonzero(flag).flatten().tolist():
            k = int(ks[i])
            xs[i] = torch.rot90(xs[i], k, dims=(-2, -1))
            ys[i] = torch.rot90(ys[i], k, dims=(-2, -1))
        x, y = torch.stack(xs), torch.stack(ys)
    # small affine: rotation, zoom, shift
    flag = _coin(p["affine"], n, g)
    ang = _uniform(-1.0, 1.0, n, g) * math.radians(float(p["rotate_deg"]))
    lo, hi = (float(v) for v in p["scale"])
    zoom = torch.exp(_uniform(math.log(lo), math.log(hi), n, g))
    shift = _uniform(-1.0, 1.0, 2 * n, g).view(n, 2) * 2.0 * float(p["shift"])
    if bool(flag.any()):
        idx = torch.nonzero(flag).flatten()
        cos, sin = torch.cos(ang[idx]) / zoom[idx], torch.sin(ang[idx]) / zoom[idx]
        theta = torch.stack(
            [
                torch.stack([cos, -sin, shift[idx, 0]], dim=1),
                torch.stack([sin, cos, shift[idx, 1]], dim=1),
            ],
            dim=1,
        ).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x[idx].shape), align_corners=False)
        xa = F.grid_sample(x[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        ya = F.grid_sample(y[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x, y = x.clone(), y.clone()
        x[idx] = xa
        y[idx] = (ya >= 0.5).to(y.dtype)
    # intensity
    flag = _coin(p["gamma"], n, g)
    glo, ghi = (float(v) for v in p["gamma_range"])
    gamma = torch.exp(_uniform(math.log(glo), math.log(ghi), n, g))
    gamma = torch.where(flag, gamma, torch.ones_like(gamma)).view(-1, 1, 1, 1).to(x)
    x = x.clamp(0.0, 1.0).pow(gamma)
    flag = _coin(p["contrast"], n, g)
    clo, chi = (float(v) for v in p["contrast_range"])
    c = torch.where(flag, _uniform(clo, chi, n, g), torch.ones(n)).view(-1, 1, 1, 1).to(x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    flag = _coin(p["brightness"], n, g)
    b = _uniform(-1.0, 1.0, n, g) * float(p["brightness_range"])
    x = x + torch.where(flag, b, torch.zeros(n)).view(-1, 1, 1, 1).to(x)
    flag = _coin(p["noise"], n, g)
    std = torch.where(flag, _uniform(0.0, float(p["noise_std"]), n, g), torch.zeros(n))
    noise = torch.randn(x.shape, generator=g).to(x) * std.view(-1, 1, 1, 1).to(x)
    x = (x + noise).clamp(0.0, 1.0)
    return x.contiguous(), y.contiguous()
