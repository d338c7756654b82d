"""Data-parallel training throughput, and a check that every rank ends with the same weights.

Run it alone (one process) or under ``torchrun`` (one process per GPU; gloo on
CPU)::

    python benchmarks/bench_ddp.py --device cuda                   # 1 GPU
    torchrun --standalone --nproc_per_node 2 benchmarks/bench_ddp.py --device cuda
    torchrun --standalone --nproc_per_node 2 benchmarks/bench_ddp.py --device cpu --size 64

Trains the real :class:`~napari_covid_seg.training.trainer.Trainer` on
synthetic slices (an uneven count: ``--slices`` training slices over the
ranks) for ``--epochs`` epochs; the last epoch is timed. Rank 0 prints one
JSON object: world size, device, precision, samples/s (all ranks together),
steps per rank, and ``weights_identical`` (every rank's parameters and
BatchNorm buffers hashed and compared).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time


def synthetic(n: int, size: int):
    import numpy as np

    from napari_covid_seg.training.datasets import SliceDataset

    rng = np.random.default_rng(0)
    images = (0.25 + 0.08 * rng.standard_normal((n, size, size))).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, size * 3 // 4, 2)
        masks[i, y : y + size // 5, x : x + size // 5] = 1
    images[masks > 0] += 0.4
    ids = [str(i) for i in range(n)]
    return SliceDataset(
        images=np.clip(images, 0, 1).astype(np.float16),
        masks=masks,
        case_ids=ids,
        slice_ids=ids,
        by_case=False,
        sources=[{"path": "synthetic", "layout": "memory", "fingerprint": "bench_ddp"}],
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--model", default="res_att_unet")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--slices", type=int, default=203, help="training slices (uneven on purpose)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    import torch.distributed as dist

    from napari_covid_seg.training import ddp
    from napari_covid_seg.training.config import TrainConfig
    from napari_covid_seg.training.trainer import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    n_val = 8
    data = synthetic(args.slices + n_val, args.size)
    split = (np.arange(args.slices), np.arange(args.slices, args.slices + n_val), {"by": "none"})
    cfg = TrainConfig(
        name="bench-ddp",
        model=args.model,
        model_kwargs={"encoder_weights": "none"} if args.model.startswith("res") else {},
        input_size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        val_batch_size=8,
        optimizer="adamw",
        lr=1e-3,
        loss="dice_bce",
        amp=args.amp,
        device=args.device,
        seed=0,
        checkpoint_every=args.epochs,
        lesion_oversample=0.0,
    )
    epochs: list[dict] = []
    steps: list[int] = []
    with tempfile.TemporaryDirectory(prefix="bench_ddp.") as tmp:
        trainer = Trainer(cfg, out_dir=tmp, data=data, split=split, register=False)
        trainer.add_hook("on_epoch_start", lambda t, e: steps.append(0))
        trainer.add_hook("on_batch_end", lambda t, e: steps.__setitem__(-1, steps[-1] + 1))
        trainer.add_hook("on_epoch_end", lambda t, e: epochs.append(e))
        t0 = time.perf_counter()
        res = trainer.fit()
        total = time.perf_counter() - t0
        info = trainer.dist
        h = hashlib.sha256()
        for k, v in sorted(trainer.raw_model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        digests = ddp.all_gather_objects((h.hexdigest(), steps), info)
        if info.is_main:
            last = epochs[-1]["epoch_seconds"]
            out = {
                "benchmark": "ddp_train",
                "world_size": info.world_size,
                "device": str(trainer.device),
                "gpu": torch.cuda.get_device_name(trainer.device)
                if trainer.device.type == "cuda"
                else None,
                "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
                    trainer.amp_dtype
                ],
                "model": args.model,
                "size": args.size,
                "batch_size_per_rank": args.batch_size,
                "train_slices": args.slices,
                "epochs": res.epochs_run,
                "last_epoch_seconds": round(last, 3),
                "samples_per_s": round(args.slices / last, 2),
                "total_seconds": round(total, 2),
                "steps_per_rank": [d[1] for d in digests],
                "weights_identical": len({d[0] for d in digests}) == 1,
                "val_dice": res.history[-1].get("val_dice"),
            }
            print(json.dumps(out, indent=2))
    if info.enabled:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
