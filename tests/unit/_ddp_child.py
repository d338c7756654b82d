"""Entry point of the two-process DDP tests (a spawned child; not collected by pytest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def tiny_slices(n: int, size: int = 32, seed: int = 0):
    """Noisy background with one bright square 'lesion' per slice; masks = lesions."""
    from napari_covid_seg.training.datasets import SliceDataset

    rng = np.random.default_rng(seed)
    images = 0.25 + 0.08 * rng.standard_normal((n, size, size))
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y, x = rng.integers(4, size - 12, 2)
        masks[i, y : y + 8, x : x + 8] = 1
    images[masks > 0] += 0.4
    ids = [str(i) for i in range(n)]
    return SliceDataset(
        images=np.clip(images, 0, 1).astype(np.float16),
        masks=masks,
        case_ids=ids,
        slice_ids=ids,
        by_case=False,
        sources=[{"path": "synthetic", "layout": "memory", "fingerprint": f"tiny{seed}"}],
    )


def config(epochs: int, batch_size: int):
    from napari_covid_seg.training.config import TrainConfig

    return TrainConfig(
        name="ddp",
        model="unet",
        model_kwargs={
            "encoder_channels": [4, 8, 8, 8, 8],
            "decoder_channels": [8, 8, 8, 8, 4],
        },
        input_size=32,
        epochs=epochs,
        batch_size=batch_size,
        val_batch_size=2,
        optimizer="adamw",
        lr=3e-3,
        scheduler="cosine",
        loss="dice_bce",
        amp="off",
        seed=0,
        checkpoint_every=1,
        augment={"flip_lr": 0.5, "gamma": 0.5},
        lesion_oversample=0.0,
    )


def run_rank(rank: int, world: int, port: int, out: str, n_train: int, n_val: int, bs: int) -> None:
    """Train uninterrupted (``a``), then stopped after one epoch (``b``) and resumed."""
    import torch
    import torch.distributed as dist

    from napari_covid_seg.training import ddp
    from napari_covid_seg.training.trainer import Trainer

    torch.set_num_threads(1)
    ddp.init_process_group("gloo", rank=rank, world_size=world, port=port, timeout_s=60)
    root = Path(out)
    data = tiny_slices(n_train + n_val)
    split = (np.arange(n_train), np.arange(n_train, n_train + n_val), {"by": "none"})
    report: dict = {"rank": rank}
    try:
        for run, kwargs in (
            ("a", {}),
            ("b", {"stop_after": 1}),
            ("b", {"resume": True}),
        ):
            steps: list[int] = []
            epochs_seen: list[int] = []
            stop_after = kwargs.pop("stop_after", None)
            trainer = Trainer(
                config(2, bs),
                out_dir=root / run,
                data=data,
                split=split,
                register=False,
                should_stop=(
                    (lambda _e=epochs_seen, _n=stop_after: len(_e) >= _n) if stop_after else None
                ),
                **kwargs,
            )
            saves: list[int] = []
            original = trainer.save_checkpoint

            def counted_save(_orig=original, _saves=saves):
                _saves.append(1)
                return _orig()

            trainer.save_checkpoint = counted_save
            trainer.add_hook("on_epoch_start", lambda t, e, s=steps: s.append(0))
            trainer.add_hook("on_batch_end", lambda t, e, s=steps: s.__setitem__(-1, s[-1] + 1))
            trainer.add_hook("on_epoch_end", lambda t, e, s=epochs_seen: s.append(e["epoch"]))
            res = trainer.fit()
            key = run if "resume" not in kwargs else "b_resumed"
            report[key] = {
                "steps": steps,
                "stopped": res.stopped,
                "epochs_run": res.epochs_run,
                "saves": len(saves),
                "history": [
                    {k: v for k, v in h.items() if k.startswith(("val_", "train_loss"))}
                    for h in res.history
                ],
            }
            state = {k: v.detach().cpu() for k, v in trainer.raw_model.state_dict().items()}
            torch.save(state, root / f"{key}_rank{rank}.pt")
    finally:
        (root / f"report_rank{rank}.json").write_text(json.dumps(report))
        dist.destroy_process_group()
