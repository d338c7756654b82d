"""Fine-tune an existing model version on new (corrected) data, doing no harm.

The human-in-the-loop step: masks corrected in napari are exported (nnU-Net v2
raw layout) and the current model is trained a little further on them. What
keeps a few slices from pulling the whole network toward them (measured in
docs/loop_experiment.md, :data:`POLICY_DEFAULTS`):

* BatchNorm running statistics stay the base's (:func:`freeze_batchnorm`);
* optionally the encoder is frozen (``train="decoder"``);
* a decoupled L2-SP pull toward the base weights (:func:`l2sp_hook`);
* replay of earlier training data where it is on disk (:func:`mix_replay`);
* a fixed recipe (the last epoch is kept, no early stopping on the few slices).

The held-out slices (:func:`holdout_split`: whole cases, one CT exported twice
counted once; within one case a block of slices with a gap; never neighbours
on both sides) are used only for the old-vs-new comparison
(:func:`compare_models`), so neither version was trained or selected on them.
With too few slices nothing is held out and there is no comparison.

:func:`finetune` is a plain function with ``progress``/``should_stop``
callbacks, so the Fine-tune widget can run it in a subprocess and the CLI
calls it directly; :func:`fit_model` is the same training on an in-memory
dataset (within-volume learning, the loop benchmark).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from .config import TrainConfig, load_config
from .datasets import SliceDataset, load_datasets
from .trainer import Trainer, TrainResult, default_out_dir

#: Fine-tuning defaults. A fixed recipe (no early stopping on the few new slices,
#: the last epoch is kept): the held-out slices are only for the comparison the user
#: sees, so neither version is selected on them. Chosen by docs/loop_experiment.md.
FINETUNE_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "lr": 1e-4,
    "optimizer": "adamw",
    "weight_decay": 0.0,  # decay toward the base weights instead (``l2sp``)
    "scheduler": "cosine",
    "warmup_epochs": 0.0,
    "loss": "dice_bce",
    "batch_size": 8,
    "patience": None,
    "select_metric": "last",
    "val_fraction": 0.2,  # share of the corrected slices held out for the comparison
    "augment": {"flip_lr": 0.5, "affine": 0.5, "gamma": 0.3, "brightness": 0.3, "noise": 0.2},
    "amp": "auto",
    "channels_last": True,
    "checkpoint_every": 5,
}

#: How the base is adapted (see :func:`finetune`); chosen by docs/loop_experiment.md.
POLICY_DEFAULTS: dict[str, Any] = {
    # BatchNorm running statistics: True: the base's (eval-mode BN); False: updated on the
    # training batches; "auto": frozen below MIN_SLICES_FOR_COMPARISON corrected slices
    # (no held-out comparison could catch harm), updated from there on (a new
    # acquisition shifts feature statistics: thick-slice blur, k = 5: +0.012 vs +0.005).
    "freeze_bn": "auto",
    "train": "all",  # "all" | "decoder" (decoder, gates and head; the encoder frozen)
    "l2sp": 1.0,  # pull toward the base weights: w -= lr * l2sp * (w - w_base) per step
    "replay_fraction": 0.3,
    "min_replay": 8,  # at least this many replay slices: one corrected slice cannot dominate
    "few_slices_lr": 3e-5,  # lr when fewer than MIN_SLICES_FOR_COMPARISON slices are trained on
}
TRAIN_PARTS: tuple[str, ...] = ("all", "decoder")
#: Fewer corrected slices than this: train on all of them, no comparison, no switch.
MIN_SLICES_FOR_COMPARISON = 5
#: Within one case, held-out and training slices are at least this far apart (mm).
HOLDOUT_GAP_MM = 10.0


# -- how the base is adapted -------------------------------------------------------------------


def freeze_batchnorm(model: Any) -> Callable[[], None]:
    """Keep every BatchNorm layer in eval mode (running statistics frozen); returns an undo.

    The layers keep their class's state dict (a subclass that ignores
    ``train(True)``), so the saved version loads like any other.
    """
    from torch import nn

    swapped: list[tuple[Any, type]] = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, _FrozenBN
        ):
            old = type(module)
            module.__class__ = _frozen_class(old)
            module.train(False)
            swapped.append((module, old))

    def undo() -> None:
        for module, old in swapped:
            module.__class__ = old

    return undo


_FROZEN_CLASSES: dict[type, type] = {}


class _FrozenBN:
    """Marker mix-in: ``train(mode)`` leaves the layer in eval mode."""

    def train(self, mode: bool = True) -> Any:
        return super().train(False)  # type: ignore[misc]


def _frozen_class(cls: type) -> type:
    if cls not in _FROZEN_CLASSES:
        _FROZEN_CLASSES[cls] = type(f"Frozen{cls.__name__}", (_FrozenBN, cls), {})
    return _FROZEN_CLASSES[cls]


def set_trainable(model: Any, part: str) -> int:
    """``"all"`` or ``"decoder"`` (encoder frozen); returns the number of trainable tensors."""
    if part not in TRAIN_PARTS:
        raise ValueError(f"train must be one of {', '.join(TRAIN_PARTS)}, got {part!r}")
    for p in model.parameters():
        p.requires_grad_(True)
    if part == "decoder":
        encoder = getattr(model, "encoder", None)
        if encoder is None:
            raise ValueError("train='decoder' needs a model with an encoder")
        for p in encoder.parameters():
            p.requires_grad_(False)
    return sum(1 for p in model.parameters() if p.requires_grad)


def l2sp_hook(model: Any, strength: float) -> Callable[[Any, dict[str, Any]], None]:
    """A Trainer ``on_batch_end`` hook pulling weights toward their starting values.

    Decoupled L2-SP (as AdamW decouples weight decay): after each step
    ``w -= lr * strength * (w - w_start)`` for every trainable tensor.
    """
    import torch

    start = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def hook(trainer: Any, event: dict[str, Any]) -> None:
        lr = float(trainer.optimizer.param_groups[0]["lr"])
        rate = min(1.0, lr * strength)
        with torch.no_grad():
            for p, p0 in start:
                p.sub_(rate * (p - p0.to(p.device)))

    return hook


# -- splits that cannot leak ------------------------------------------------------------------


def case_keys(roots: Sequence[str | os.PathLike]) -> tuple[dict[str, str], dict[str, float]]:
    """Per case id (prefixed as :func:`~.datasets.load_datasets` does): a content key and
    the axial spacing in mm.

    The key is a hash of the image voxels, so one CT exported twice under two
    case ids is one group. 2D slice folders give nothing (each file is its own case).
    """
    import hashlib

    from ..io import read_volume
    from .datasets import detect_layout

    keys: dict[str, str] = {}
    spacing: dict[str, float] = {}
    for k, root in enumerate(roots):
        if detect_layout(root) != "nnunet_v2":
            continue
        prefix = f"{k}/" if len(roots) > 1 else ""
        for img in sorted((Path(root) / "imagesTr").glob("*_0000.nii*")):
            case = img.name.split("_0000.nii")[0]
            try:
                vol = read_volume(img, as_mask=False)
            except Exception:
                continue
            h = hashlib.sha256(np.ascontiguousarray(vol.data).tobytes())
            h.update(str(vol.data.shape).encode())
            keys[prefix + case] = h.hexdigest()[:16]
            spacing[prefix + case] = float(vol.spacing[vol.reorientation.axial_axis])
    return keys, spacing


def _slice_z(slice_id: str) -> int | None:
    tail = slice_id.rsplit(":z=", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].lstrip("-").isdigit() else None


def holdout_split(
    data: SliceDataset,
    fraction: float,
    seed: int,
    *,
    keys: dict[str, str] | None = None,
    spacing_mm: dict[str, float] | None = None,
    gap_mm: float = HOLDOUT_GAP_MM,
    min_slices: int = MIN_SLICES_FOR_COMPARISON,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Training and held-out slices that cannot leak; returns ``(train, held_out, record)``.

    * Several cases (by content key: one CT exported twice is one group): whole
      cases are held out.
    * One case: a block of consecutive slices is held out and training slices
      closer than ``gap_mm`` to it are dropped: never neighbours on both sides.
    * 2D slice folders: single slices (each file is its own image).
    * Fewer than ``min_slices`` slices, or ``fraction`` 0: nothing is held out
      (``record["by"] == "none"``): no comparison is possible.
    """
    n = len(data)
    if n == 0:
        raise DatasetError("The dataset is empty")
    keys = keys or {}
    spacing_mm = spacing_mm or {}
    rng = np.random.default_rng(seed)
    groups = [keys.get(c, c) for c in data.case_ids]
    order_groups = list(dict.fromkeys(groups))
    dropped = np.zeros(0, dtype=np.int64)
    if fraction <= 0 or n < min_slices:
        train, held = np.arange(n), np.zeros(0, dtype=np.int64)
        by = "none"
    elif data.by_case and len(order_groups) >= 2:
        perm = rng.permutation(len(order_groups))
        n_val = min(len(order_groups) - 1, max(1, round(fraction * len(order_groups))))
        val_groups = {order_groups[i] for i in perm[:n_val]}
        is_val = np.array([g in val_groups for g in groups])
        train, held = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        by = "case"
    elif data.by_case:
        zs = np.array(
            [z if (z := _slice_z(s)) is not None else i for i, s in enumerate(data.slice_ids)]
        )
        order = np.argsort(zs, kind="stable")
        n_val = min(n - 1, max(1, round(fraction * n)))
        first = int(rng.integers(0, n - n_val + 1))
        held = np.sort(order[first : first + n_val])
        lo, hi = zs[held].min(), zs[held].max()
        step = max(1e-6, float(spacing_mm.get(data.case_ids[0], 5.0)))
        gap = int(np.ceil(gap_mm / step))
        rest = np.setdiff1d(np.arange(n), held)
        near = (zs[rest] > lo - gap) & (zs[rest] < hi + gap)
        train, dropped = rest[~near], rest[near]
        by = "block"
        if len(train) == 0:  # too few slices to keep a gap: no comparison
            train, held, by = np.arange(n), np.zeros(0, dtype=np.int64), "none"
            dropped = dropped[:0]
    else:
        perm = rng.permutation(n)
        n_val = min(n - 1, max(1, round(fraction * n)))
        held, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        by = "slice"
    record = {
        "by": by,
        "seed": int(seed),
        "val_fraction": float(fraction),
        "gap_mm": float(gap_mm) if by == "block" else None,
        "n_train": len(train),
        "n_val": len(held),
        "n_dropped": len(dropped),
        "val_cases": sorted({data.case_ids[i] for i in held}),
        "val_ids": [data.slice_ids[i] for i in held],
    }
    return train, held, record


def mix_replay(
    new: SliceDataset,
    replay: SliceDataset | None,
    replay_fraction: float,
    val_fraction: float,
    seed: int,
    *,
    split: tuple[np.ndarray, np.ndarray, dict[str, Any]] | None = None,
    min_replay: int = 0,
) -> tuple[SliceDataset, tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Concatenate new data and a seeded replay sample; hold out new slices only.

    ``split`` is the new data's ``(train, held_out, record)`` (default:
    :func:`holdout_split` without content keys). ``replay_fraction`` is the
    share of replay slices in the training set:
    ``n_replay = max(min_replay, round(F / (1 - F) * n_new_train))`` (at most all of them).
    """
    train_new, val_new, record = split or holdout_split(new, val_fraction, seed)
    if replay is None or len(replay) == 0 or replay_fraction <= 0:
        record["n_replay"] = 0
        return new, (train_new, val_new, record)
    if not 0 < replay_fraction < 1:
        raise DatasetError(f"replay_fraction must be in [0, 1), got {replay_fraction}")
    want = round(replay_fraction / (1.0 - replay_fraction) * len(train_new))
    n_rep = int(min(len(replay), max(1, int(min_replay), want)))
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
    replay_fraction: float | None = None,
    config: TrainConfig | str | os.PathLike | None = None,
    name: str | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str = "auto",
    rotate_k: int | None = None,
    replay_rotate_k: int | None = None,
    lesion_labels: Sequence[int] | None = None,
    patience: int | None = None,
    seed: int | None = None,
    freeze_bn: bool | str | None = None,
    train: str | None = None,
    l2sp: float | None = None,
    min_replay: int | None = None,
    replay_data: SliceDataset | None = None,
    compare: bool = True,
    store: Any = None,
    register: bool = True,
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
            (:data:`FINETUNE_DEFAULTS`, or ``config``'s values). Without ``lr``,
            fewer than :data:`MIN_SLICES_FOR_COMPARISON` training slices use
            ``POLICY_DEFAULTS["few_slices_lr"]``.
        replay_dirs: earlier training data to mix in (e.g. the base's data).
        replay_fraction: share of replay slices in the training set.
        replay_data: ``replay_dirs`` already loaded (same input size and ROI policy).
        config: a TrainConfig or YAML path used instead of the defaults
            (its model settings are ignored: the base's architecture is kept).
        name: store name of the child (default ``<base name>-ft``).
        rotate_k / replay_rotate_k: ``np.rot90`` k for 2D-slice folders.
        freeze_bn, train, l2sp, min_replay: how the base adapts (:data:`POLICY_DEFAULTS`).
        compare: score base and child on the held-out slices (``result.comparison``).
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
    policy = resolve_policy(
        freeze_bn=freeze_bn,
        train=train,
        l2sp=l2sp,
        replay_fraction=replay_fraction,
        min_replay=min_replay,
    )
    input_size = int(mv.preprocessing.get("input_size", cfg.input_size))
    # Fine-tuning follows the base version's ROI policy (None for versions before it).
    base_roi = mv.preprocessing.get("roi")
    roots = tuple(os.fspath(d) for d in _as_list(data_dirs))
    cfg = cfg.replace(
        roi=base_roi or {"mode": "none"},
        guidance=mv.preprocessing.get("guidance"),  # a click model stays one
        name=name or f"{base_name}-ft",
        model=mv.config.name,
        model_kwargs={},
        data=roots,
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
    replay = replay_data  # preloaded by a caller that fine-tunes many times (benchmarks)
    if replay is None and replay_dirs:
        replay = load_datasets(
            list(replay_dirs),
            input_size=input_size,
            rotate_k=cfg.rotate_k if replay_rotate_k is None else replay_rotate_k,
            lesion_labels=cfg.lesion_labels,
            roi=cfg.roi,
        )
    keys, spacing = case_keys(list(roots))
    split_new = holdout_split(new, cfg.val_fraction, cfg.split_seed, keys=keys, spacing_mm=spacing)
    n_new_train = len(split_new[0])
    if policy["freeze_bn"] == "auto":
        policy["freeze_bn"] = n_new_train + len(split_new[1]) < MIN_SLICES_FOR_COMPARISON
    if lr is None and n_new_train < MIN_SLICES_FOR_COMPARISON:
        # One or a few slices: a lower rate (k = 1 lost 0.02 Dice at 1e-4, nothing at 3e-5).
        cfg = cfg.replace(lr=float(policy["few_slices_lr"]))
    data, split = mix_replay(
        new,
        replay,
        policy["replay_fraction"],
        cfg.val_fraction,
        cfg.split_seed,
        split=split_new,
        min_replay=int(policy["min_replay"]),
    )
    out = Path(out_dir) if out_dir is not None else default_out_dir(cfg.name)
    provenance = {
        "parent_path": str(base_path),
        "parent_version": mv.version,
        "finetune": {
            "base": base_name,
            "replay_dirs": [os.fspath(d) for d in replay_dirs],
            "replay_fraction": policy["replay_fraction"],
            "n_replay": split[2].get("n_replay", 0),
            "freeze_bn": policy["freeze_bn"],
            "train": policy["train"],
            "l2sp": policy["l2sp"],
            "min_replay": policy["min_replay"],
        },
    }
    result = fit_model(
        mv.model,
        data,
        split,
        cfg,
        policy,
        out_dir=out,
        parent=base_name,
        provenance=provenance,
        store=store,
        register=register,
        progress=progress,
        should_stop=should_stop,
        handle_signals=handle_signals,
    )
    del mv
    result.comparison = None
    stopping = should_stop is not None and should_stop()
    if compare and len(split[1]) and not stopping and result.best_dir is not None:
        if progress is not None:
            progress({"event": "comparing", "n_slices": len(split[1])})
        result.comparison = compare_models(
            base_path,
            result.best_dir,
            data.subset(split[1]),
            device=device,
            amp=cfg.amp,
        )
    return result if return_result else result.info


def resolve_policy(**overrides: Any) -> dict[str, Any]:
    """:data:`POLICY_DEFAULTS` with the given (non-None) overrides, checked."""
    policy = dict(POLICY_DEFAULTS)
    policy.update({k: v for k, v in overrides.items() if v is not None})
    if policy["freeze_bn"] not in (True, False, "auto"):
        raise ValueError(f"freeze_bn must be True, False or 'auto', got {policy['freeze_bn']!r}")
    if policy["train"] not in TRAIN_PARTS:
        raise ValueError(f"train must be one of {', '.join(TRAIN_PARTS)}, got {policy['train']!r}")
    if float(policy["l2sp"]) < 0:
        raise ValueError(f"l2sp must be >= 0, got {policy['l2sp']}")
    return policy


def fit_model(
    model: Any,
    data: SliceDataset,
    split: tuple[np.ndarray, np.ndarray, dict[str, Any]],
    cfg: TrainConfig,
    policy: dict[str, Any],
    *,
    out_dir: str | os.PathLike,
    parent: str | None = None,
    provenance: dict[str, Any] | None = None,
    store: Any = None,
    register: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    handle_signals: bool = False,
) -> TrainResult:
    """Train ``model`` (in place) under ``policy`` with the Trainer; returns its result."""
    unfreeze = freeze_batchnorm(model) if policy["freeze_bn"] else (lambda: None)
    set_trainable(model, policy["train"])
    trainer = Trainer(
        cfg,
        out_dir=out_dir,
        data=data,
        model=model,
        parent=parent,
        provenance=provenance,
        store=store,
        register=register,
        progress=progress,
        should_stop=should_stop,
        handle_signals=handle_signals,
        split=split,
    )
    if float(policy["l2sp"]) > 0:
        trainer.add_hook("on_batch_end", l2sp_hook(model, float(policy["l2sp"])))
    try:
        return trainer.fit()
    finally:
        unfreeze()
        set_trainable(model, "all")


def compare_models(
    base_path: str | os.PathLike,
    child_path: str | os.PathLike,
    held_out: SliceDataset,
    *,
    device: str = "cpu",
    amp: str = "off",
) -> dict[str, Any] | None:
    """Base and child scored by the same code on slices neither trained or was selected on.

    Pooled over the pixels at the model's input size with each version's
    threshold (the trainer's validation, not a user figure). None without slices.
    """
    from ..models.checkpoint import load_model_version
    from .evaluate import evaluate_slices
    from .trainer import resolve_device

    if len(held_out) == 0:
        return None
    dev = resolve_device(device)
    out: dict[str, Any] = {"n_slices": len(held_out), "val_ids": list(held_out.slice_ids)}
    for role, path in (("base", base_path), ("child", child_path)):
        mv = load_model_version(path, device="cpu")
        thr = float(mv.preprocessing.get("threshold", 0.5))
        m = evaluate_slices(
            mv.model,
            held_out,
            threshold=thr,
            device=dev,
            amp=amp,
            native=False,
            preprocessing=mv.preprocessing,
        )
        out[role] = {k: m[k] for k in ("dice", "dice_mean", "iou", "precision", "sensitivity")}
        del mv
    out["old_dice"] = out["base"]["dice"]
    out["new_dice"] = out["child"]["dice"]
    return out


def _as_list(dirs: Sequence[str | os.PathLike] | str | os.PathLike) -> list[str | os.PathLike]:
    if isinstance(dirs, str | os.PathLike):
        return [dirs]
    return list(dirs)
