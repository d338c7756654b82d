"""The human-in-the-loop, simulated without a GUI: correct k slices, fine-tune, segment again.

The pieces :mod:`benchmarks.bench_loop` puts together, seeded and repeatable:

* :func:`labelled_cases`: labelled 2D slices as the CT a user has (one-slice HU
  NIfTI volumes with their true anatomy), optionally through an acquisition
  variant (:data:`.acquisition.VARIANTS`: sharper kernel and noise, thick-slice
  blur, a scanner's full field of view) so the source is one the base never saw;
* :func:`write_cases`: such cases as an nnU-Net v2 raw folder, exactly what
  "Export for training" gives the Fine-tune widget (every voxel reviewed);
* :func:`trial`: fine-tune the base on k of them with the product's defaults
  (:func:`.finetune.finetune`, the worker's settings) and score base and child
  through the user path (:func:`.evaluate.evaluate_cases`: NIfTI -> reader ->
  segment) on slices neither saw.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.volume import Volume

Case = tuple[str, Volume, np.ndarray]


def labelled_cases(
    data_dir: str | os.PathLike,
    ids: Sequence[str],
    variant: str = "tight_crop",
    *,
    seed: int = 0,
    transpose: bool = True,
) -> list[Case]:
    """``[(id, one-slice HU Volume, truth (1, H, W))]`` of a 2D slice folder under ``variant``.

    Each slice's variant noise is seeded by ``seed`` and its position in ``ids``'
    sorted order, so a slice looks the same in every trial.
    """
    from .acquisition import VARIANTS, slice_volume, windowed_to_hu
    from .evaluate import load_labelled_slices

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    out = []
    for name, img, msk in load_labelled_slices(data_dir, transpose=transpose, ids=list(ids)):
        rng = np.random.default_rng([seed, _stable_int(name)])
        hu, m = VARIANTS[variant](windowed_to_hu(img), msk, rng)
        out.append((name, slice_volume(hu), np.asarray(m, dtype=np.uint8)[None]))
    return out


def _stable_int(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def write_cases(folder: str | os.PathLike, cases: Sequence[Case]) -> Path:
    """An nnU-Net v2 raw folder holding ``cases`` (image + label, every slice reviewed)."""
    from ..io import write_volume
    from ..io.atomic import atomic_write_json
    from ..io.dataset_export import CHANNEL_NAMES, FILE_ENDING, LABELS

    root = Path(folder)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for name, vol, truth in cases:
        case = f"s{name}"
        write_volume(root / "imagesTr" / f"{case}_0000{FILE_ENDING}", vol.data, vol)
        mask = Volume(data=truth.astype(np.uint8), affine=vol.affine, is_mask=True)
        write_volume(root / "labelsTr" / f"{case}{FILE_ENDING}", mask.data, mask)
    atomic_write_json(
        root / "dataset.json",
        {
            "channel_names": CHANNEL_NAMES,
            "labels": LABELS,
            "numTraining": len(list((root / "labelsTr").iterdir())),
            "file_ending": FILE_ENDING,
        },
    )
    return root


def subset_folder(pool: str | os.PathLike, ids: Sequence[str], dest: str | os.PathLike) -> Path:
    """An nnU-Net folder ``dest`` with only cases ``ids`` of ``pool`` (symlinks, else copies)."""
    import shutil

    from ..io.dataset_export import FILE_ENDING

    src, dst = Path(pool), Path(dest)
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for i in ids:
        for sub, name in (
            ("imagesTr", f"s{i}_0000{FILE_ENDING}"),
            ("labelsTr", f"s{i}{FILE_ENDING}"),
        ):
            try:
                os.symlink((src / sub / name).resolve(), dst / sub / name)
            except OSError:
                shutil.copy2(src / sub / name, dst / sub / name)
    shutil.copy2(src / "dataset.json", dst / "dataset.json")
    return dst


def score(
    model_path: str | os.PathLike, cases: Sequence[Case], device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Per-case confusion counts ``[TP, FP, FN, TN]`` of a model version through the user path."""
    from ..inference import load_predictor
    from ..models.checkpoint import load_model_version
    from .evaluate import evaluate_cases

    predictor = load_predictor(load_model_version(model_path, device="cpu"), device=device)
    with tempfile.TemporaryDirectory(prefix="covid-seg-loop-") as tmp:
        m = evaluate_cases(predictor, list(cases), workdir=tmp, uncertainty=False)
    return {k: np.asarray(v, dtype=np.int64) for k, v in m["case_counts"].items()}


def pooled(counts: dict[str, np.ndarray], ids: Sequence[str]) -> dict[str, float]:
    """Pooled Dice and per-slice mean Dice over cases ``ids``."""
    from .metrics import summarize

    s = summarize(np.stack([counts[i] for i in ids]))
    return {"dice": float(s["dice"]), "dice_mean": float(s["dice_mean"])}


def trial(
    base: str | os.PathLike,
    pool: str | os.PathLike,
    train_ids: Sequence[str],
    eval_cases: Sequence[Case],
    *,
    workdir: str | os.PathLike,
    replay_dir: str | os.PathLike | None = None,
    replay_rotate_k: int | None = None,
    min_samples_per_epoch: int = 16,
    seed: int = 0,
    device: str = "cpu",
    store: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Fine-tune ``base`` on cases ``train_ids`` of ``pool`` as the Fine-tune widget does,
    then score the child on ``eval_cases`` (``counts``: per-case confusion counts).

    ``options`` go to :func:`.finetune.finetune` (``epochs``, ``lr``,
    ``freeze_bn``, ``train``, ``l2sp``, ``replay_fraction``); the defaults are
    the product's. Nothing is registered.
    """
    import time

    from .config import TrainConfig
    from .finetune import FINETUNE_DEFAULTS, finetune, resolve_policy
    from .finetune_run import PASSES_PER_EPOCH, samples_per_epoch

    work = Path(workdir)
    data = subset_folder(pool, train_ids, work / "data")
    cfg = TrainConfig(**FINETUNE_DEFAULTS)
    policy = resolve_policy(
        **{
            k: options.get(k)
            for k in ("freeze_bn", "train", "l2sp", "replay_fraction", "min_replay")
        }
    )
    spe = samples_per_epoch(
        [data],
        min_samples_per_epoch,
        val_fraction=cfg.val_fraction,
        replay_fraction=policy["replay_fraction"],
        has_replay=replay_dir is not None,
        passes=int(options.get("passes", PASSES_PER_EPOCH)),
    )
    cfg = cfg.replace(samples_per_epoch=spe, amp=options.get("amp", cfg.amp))
    t0 = time.perf_counter()
    result = finetune(
        base,
        [data],
        epochs=options.get("epochs"),
        lr=options.get("lr"),
        replay_dirs=[replay_dir] if replay_dir is not None else (),
        replay_rotate_k=replay_rotate_k,
        config=cfg,
        out_dir=work / "run",
        device=device,
        seed=seed,
        compare=False,
        register=False,
        store=store,
        return_result=True,
        replay_data=options.get("replay_data"),
        **{k: policy[k] for k in ("freeze_bn", "train", "l2sp", "replay_fraction", "min_replay")},
    )
    seconds = time.perf_counter() - t0
    return {
        "counts": score(result.best_dir, eval_cases, device=device),
        "epochs_run": result.epochs_run,
        "seconds": round(seconds, 1),
        "n_train": len(train_ids),
        "policy": policy,
    }
