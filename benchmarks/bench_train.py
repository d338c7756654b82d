"""Training throughput: samples/s of one optimisation step (forward + loss + backward + step).

Two settings, on the CPU and (if present) on CUDA:

* ``paper``: batch 2, fp32, NCHW, Adam (the paper's recipe);
* ``fast``: batch 8, bf16 autocast, channels_last, AdamW (training/configs/default.yaml);
* ``fast_fp32``: the same in fp32 (isolates the bf16 autocast gain);
* ``fast_auto`` (CUDA only): the precision ``amp: auto`` picks on this GPU
  (bf16 where native, fp16 with a GradScaler on older GPUs).

Prints one JSON object. Example::

    python benchmarks/bench_train.py --steps 5 --threads 2
    python benchmarks/bench_train.py --device cuda --steps 20 --warmup 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time


def bench(
    model_name: str,
    device: str,
    batch: int,
    bf16: bool | str,
    channels_last: bool,
    size: int,
    steps: int,
    warmup: int,
) -> dict:
    """One setting; ``bf16`` True/False, or ``"auto"`` for the device layer's training choice."""
    import torch

    from napari_covid_seg.inference import device as devices
    from napari_covid_seg.models import build_model
    from napari_covid_seg.training.losses import build_loss

    torch.manual_seed(0)
    dev = torch.device(device)
    if bf16 == "auto":
        dtype = devices.training_dtype("auto", dev)
    else:
        dtype = torch.bfloat16 if bf16 else None
    scaler = devices.grad_scaler(dtype, dev)
    model = build_model(model_name).to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = build_loss("dice_bce")
    x = torch.rand(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
    y = (torch.rand(batch, 1, size, size, device=dev) > 0.8).float()
    model.train()

    def step() -> None:
        ctx = torch.autocast(dev.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            out = model(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    return {
        "device": device,
        "batch": batch,
        "bf16_autocast": dtype is torch.bfloat16,
        "precision": devices.precision_name(dtype),
        "grad_scaler": scaler is not None,
        "channels_last": channels_last,
        "size": size,
        "steps": steps,
        "seconds_per_step": round(sec / steps, 4),
        "samples_per_s": round(batch * steps / sec, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="res_att_unet")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--device", default="all", help="cpu, cuda, or all (cpu + cuda)")
    args = parser.parse_args()

    import torch

    from napari_covid_seg.inference.device import cpu_supports_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    settings: dict[str, tuple[int, bool | str, bool]] = {
        "paper": (2, False, False),
        "fast_fp32": (8, False, True),
        "fast": (8, True, True),
    }
    devices = ["cpu"] if args.device in ("all", "cpu") else []
    if torch.cuda.is_available() and not args.cpu_only and args.device in ("all", "cuda"):
        devices.append("cuda")
    results = {}
    for dev in devices:
        chosen = dict(settings, fast_auto=(8, "auto", True)) if dev == "cuda" else settings
        for name, (batch, bf16, cl) in chosen.items():
            results[f"{dev}_{name}"] = bench(
                args.model, dev, batch, bf16, cl, args.size, args.steps, args.warmup
            )
    for dev in devices:
        paper, fast = results[f"{dev}_paper"], results[f"{dev}_fast"]
        results[f"{dev}_speedup_fast_vs_paper"] = round(
            fast["samples_per_s"] / paper["samples_per_s"], 2
        )
        results[f"{dev}_speedup_bf16_vs_fp32"] = round(
            fast["samples_per_s"] / results[f"{dev}_fast_fp32"]["samples_per_s"], 2
        )
    out = {
        "benchmark": "train_step",
        "model": args.model,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_fast_bf16": cpu_supports_bf16(),
        "cuda": torch.cuda.get_device_name(0) if "cuda" in devices else None,
        "results": results,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
