"""Training throughput: samples/s of one optimisation step (forward + loss + backward + step).

Two settings, on the CPU and (if present) on CUDA:

* ``paper``: batch 2, fp32, NCHW, Adam (the paper's recipe);
* ``fast``: batch 8, bf16 autocast, channels_last, AdamW (training/configs/default.yaml);
* ``fast_fp32``: the same in fp32 (isolates the bf16 autocast gain).

Prints one JSON object. Example::

    python benchmarks/bench_train.py --steps 5 --threads 2
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
    bf16: bool,
    channels_last: bool,
    size: int,
    steps: int,
    warmup: int,
) -> dict:
    import torch

    from napari_covid_seg.models import build_model
    from napari_covid_seg.training.losses import build_loss

    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model(model_name).to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = build_loss("dice_bce")
    x = torch.rand(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
    y = (torch.rand(batch, 1, size, size, device=dev) > 0.8).float()
    model.train()

    def step() -> None:
        ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = model(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

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
        "bf16_autocast": bf16,
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
    args = parser.parse_args()

    import torch

    from napari_covid_seg.training.trainer import cpu_has_fast_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"paper": (2, False, False), "fast_fp32": (8, False, True), "fast": (8, True, True)}
    devices = ["cpu"]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append("cuda")
    results = {}
    for dev in devices:
        for name, (batch, bf16, cl) in settings.items():
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
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "cuda": torch.cuda.get_device_name(0) if "cuda" in devices else None,
        "results": results,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
