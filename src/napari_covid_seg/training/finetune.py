"""Fine-tune an existing model version on new (corrected) data.

The human-in-the-loop step: masks corrected in napari are exported (nnU-Net v2
raw layout, ``reviewed.json`` marking the reviewed slices) and the current
model is trained a little further on them, at a lower learning rate, with a
replay sample of earlier training data mixed in so it does not forget, and
with early stopping on the new data's validation split. The result is
registered as a child version (``provenance.parent`` = the base's name).

:func:`finetune` is a plain function with ``progress``/``should_stop``
callbacks, so the Fine-tune widget can run it in a subprocess and the CLI
calls it directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from .config import TrainConfig, load_config
from .datasets import SliceDataset, load_datasets, split_dataset
from .trainer import Trainer, TrainResult, default_out_dir

#: Fine-tuning defaults (a base model trained at lr 1e-3/1e-4 continues at 3e-5).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "epochs": 30,
    "lr": 3e-5,
    "optimizer": "adamw",
    "weight_decay": 1e-4,
    "scheduler": "cosine",
    "warmup_epochs": 0.0,
    "loss": "dice_bce",
    "batch_size": 8,
    "patience": 8,
    "val_fraction": 0.2,
    "augment": {"flip_lr": 0.5, "affine": 0.5, "gamma": 0.3, "brightness": 0.3, "noise": 0.2},
    "amp": "auto",
    "channels_last": True,
    "checkpoint_every": 5,
}


def mix_replay(
    new: SliceDataset,
    replay: SliceDataset | None,
    replay_fraction: float,
    val_fraction: float,
    seed: int,
) -> tuple[SliceDataset, tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Concatenate new data and a seeded replay sample; validate on the new data only.

    ``replay_fraction`` is the share of replay slices in the training set:
    ``n_replay = round(F / (1 - F) * n_new_train)`` (at most all of them).
    """
    train_new, val_new, record = split_dataset(new, val_fraction, seed)
    if replay is None or len(replay) == 0 or replay_fraction <= 0:
        record["n_replay"] = 0
        return new, (train_new, val_new, record)
    if not 0 < replay_fraction < 1:
        raise DatasetError(f"replay_fraction must be in [0, 1), got {replay_fraction}")
    want = round(replay_fraction / (1.0 - replay_fraction) * len(train_new))
    n_rep = int(min(len(replay), max(1, want)))
    rng = np.random.default_rng(seed + 1)
    pick = np.sort(rng.choice(len(replay), size=n_rep, replace=False))
    rep = replay.subset(pick)
    rep.case_ids = [f"replay/{c}" for c in rep.case_ids]
    rep.slice_ids = [f"replay/{s}" for s in rep.slice_ids]
    rep.sources = [{**s, "role": "replay"} for s in rep.sources]
    combined = SliceDataset.concat([new, rep])
    train = np.concatenate([train_new, len(new) + np.arange(n_rep)])
    record = {**record, "n_replay": n_rep, "n_train": len(train)}
    return combined, (train, val_new, record)


def finetune(
    base: str | os.PathLike,
    data_dirs: Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    replay_dirs: Sequence[str | os.PathLike] = (),
    replay_fraction: float = 0.3,
    config: TrainConfig | str | os.PathLike | None = None,
    name: str | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str = "auto",
    rotate_k: int | None = None,
    replay_rotate_k: int | None = None,
    lesion_labels: Sequence[int] | None = None,
    patience: int | None = None,
    seed: int | None = None,
    store: Any = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    handle_signals: bool = False,
    return_result: bool = False,
) -> Any:
    """Fine-tune model version ``base`` on ``data_dirs``; returns the child's ModelInfo.

    Args:
        base: a store name (``"default"``, ``"my-model"``) or a version folder/file.
        data_dirs: dataset folder(s) with the corrected data.
        epochs, lr, patience, seed: override the fine-tuning defaults
            (:data:`FINETUNE_DEFAULTS`, or ``config``'s values).
        replay_dirs: earlier training data to mix in (e.g. the base's data).
        replay_fraction: share of replay slices in the training set.
        config: a TrainConfig or YAML path used instead of the defaults
            (its model settings are ignored: the base's architecture is kept).
        name: store name of the child (default ``<base name>-ft``).
        rotate_k / replay_rotate_k: ``np.rot90`` k for 2D-slice folders.
        progress, should_stop: callbacks (see :class:`~.trainer.Trainer`).
        return_result: return the full :class:`TrainResult` instead of the ModelInfo.
    Raises:
        ModelLoadError: unknown or damaged base; DatasetError: bad data;
        CancelledError: stopped before the first epoch finished.
    """
    from ..models.checkpoint import load_model_version
    from ..models.store import ModelStore

    store = store if store is not None else ModelStore()
    base_path = store.resolve(base)
    mv = load_model_version(base_path, device="cpu")
    base_name = mv.name or Path(base_path).name
    if isinstance(config, TrainConfig):
        cfg = config
    elif config is not None:
        cfg = load_config(config)
    else:
        cfg = TrainConfig(**FINETUNE_DEFAULTS)
    input_size = int(mv.preprocessing.get("input_size", cfg.input_size))
    # Fine-tuning follows the base version's ROI policy (None for versions before it).
    base_roi = mv.preprocessing.get("roi")
    cfg = cfg.replace(
        roi=base_roi or {"mode": "none"},
        name=name or f"{base_name}-ft",
        model=mv.config.name,
        model_kwargs={},
        data=tuple(os.fspath(d) for d in _as_list(data_dirs)),
        input_size=input_size,
        epochs=epochs,
        lr=lr,
        patience=patience,
        seed=seed,
        device=device,
        rotate_k=rotate_k,
        lesion_labels=tuple(lesion_labels) if lesion_labels is not None else None,
        description=f"Fine-tuned from {base_name} on corrected data",
    )
    new = load_datasets(
        cfg.data,
        input_size=input_size,
        rotate_k=cfg.rotate_k,
        lesion_labels=cfg.lesion_labels,
        roi=cfg.roi,
    )
    replay = None
    if replay_dirs:
        replay = load_datasets(
            list(replay_dirs),
            input_size=input_size,
            rotate_k=cfg.rotate_k if replay_rotate_k is None else replay_rotate_k,
            lesion_labels=cfg.lesion_labels,
            roi=cfg.roi,
        )
    data, split = mix_replay(new, replay, replay_fraction, cfg.val_fraction, cfg.split_seed)
    out = Path(out_dir) if out_dir is not None else default_out_dir(cfg.name)
    provenance = {
        "parent_path": str(base_path),
        "parent_version": mv.version,
        "finetune": {
            "base": base_name,
            "replay_dirs": [os.fspath(d) for d in replay_dirs],
            "replay_fraction": replay_fraction,
            "n_replay": split[2].get("n_replay", 0),
        },
    }
    trainer = Trainer(
        cfg,
        out_dir=out,
        data=data,
        model=mv.model,
        parent=base_name,
        provenance=provenance,
        store=store,
        progress=progress,
        should_stop=should_stop,
        handle_signals=handle_signals,
        split=split,
    )
    result: TrainResult = trainer.fit()
    return result if return_result else result.info


def _as_list(dirs: Sequence[str | os.PathLike] | str | os.PathLike) -> list[str | os.PathLike]:
    if isinstance(dirs, str | os.PathLike):
        return [dirs]
    return list(dirs)
