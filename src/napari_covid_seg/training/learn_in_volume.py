"""Learn from my corrections, in this volume: fine-tune on k reviewed slices, re-segment the rest.

The user corrects or reviews k axial slices of the open CT; :func:`iter_learn`
fine-tunes a copy of the model on exactly those slices (plus a replay sample
of earlier training data where it is on disk), with the product's fine-tuning
policy (:mod:`.finetune`: BatchNorm frozen, L2-SP, fixed recipe), then
segments the same volume again and merges: the protected (reviewed or
corrected) slices keep the user's labels, every other slice takes the new
prediction. Nothing is registered in the model store and the source image is
never written: the caller gets new labels to apply as one undoable step.

It is a plain generator (events while training and segmenting, the
:class:`LearnResult` as its return value) with a ``should_stop`` callback, so
the Correct widget runs it with ``thread_worker`` and the ``learn`` command
calls :func:`learn_in_volume`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CancelledError, DatasetError
from ..io.volume import Volume

#: Within-volume defaults: fewer epochs than a registered fine-tune (seconds, not minutes).
LEARN_DEFAULTS: dict[str, Any] = {"epochs": 8, "lr": 1e-4, "min_samples_per_epoch": 16}


@dataclass
class LearnResult:
    """New labels for the whole volume (source ``(z, y, x)``) and what was done."""

    labels: np.ndarray
    changed_slices: list[int]  # source axial indices whose labels were replaced
    protected_slices: list[int]
    n_train: int
    n_replay: int
    epochs: int
    timings: dict[str, float] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


def slices_to_learn(
    labels: np.ndarray,
    prediction: np.ndarray | None,
    reviewed: Sequence[int] | None,
    axial_axis: int,
) -> list[int]:
    """Axial slices the user vouched for: reviewed ones, and those edited away from
    the model's ``prediction`` (source indices, sorted)."""
    out = {int(z) for z in reviewed or ()}
    if prediction is not None and np.shape(prediction) == np.shape(labels):
        a = np.moveaxis(np.asarray(labels) != 0, axial_axis, 0)
        b = np.moveaxis(np.asarray(prediction) != 0, axial_axis, 0)
        diff = (a != b).reshape(a.shape[0], -1).any(axis=1)
        out |= {int(z) for z in np.flatnonzero(diff)}
    return sorted(out)


def volume_slices(
    volume: Volume,
    labels: np.ndarray,
    slices: Sequence[int],
    *,
    input_size: int,
    roi: dict | None,
) -> Any:
    """A :class:`~.datasets.SliceDataset` of axial ``slices`` (source indices) of ``volume``.

    Exactly what the nnU-Net loader makes of an export of this volume with
    these slices reviewed: canonical orientation, the lung ROI found on the
    whole volume, normalised and resized to ``input_size``.
    """
    from ..inference.preprocess import normalize
    from ..io.orientation import to_canonical
    from .datasets import SliceDataset, _standardized, _volume_roi, binarize_mask, resize_stack

    r = volume.reorientation
    c_img = to_canonical(volume.data, r)
    c_lab = to_canonical(binarize_mask(np.asarray(labels) != 0, None, "labels"), r)
    n = c_img.shape[0]
    zs = sorted({int(z) for z in slices})
    bad = [z for z in zs if not 0 <= z < n]
    if bad:
        raise DatasetError(f"slices {bad} are outside the axial range 0..{n - 1}")
    if not zs:
        raise DatasetError("no reviewed or corrected slices to learn from")
    canon = [r.axial_index_to_canonical(z, n) for z in zs]
    spacing_c = tuple(float(volume.spacing[a]) for a in r.axes)
    std: list = []
    box = _volume_roi(c_img, volume.intensity, spacing_c, roi, None, std)
    img, lab = _standardized(c_img[canon], std, volume.intensity), c_lab[canon]
    if box is not None:
        from ..inference.roi import crop_pad, fill_value

        img = crop_pad(img, box, fill_value(roi, volume.intensity))  # type: ignore[arg-type]
        lab = crop_pad(lab, box, 0)
    x = normalize(img, intensity=volume.intensity)
    return SliceDataset(
        images=resize_stack(x, input_size).astype(np.float16),
        masks=resize_stack(lab, input_size, is_mask=True),
        case_ids=["volume"] * len(zs),
        slice_ids=[f"volume:z={z}" for z in zs],
        by_case=True,
        sources=[{"path": str(volume.source_path or "<in memory>"), "layout": "volume"}],
        native_shapes=[tuple(int(s) for s in c_img.shape[1:])] * len(zs),
    )


def iter_learn(
    volume: Volume,
    labels: np.ndarray,
    train_slices: Sequence[int],
    model: Any = "default",
    *,
    protected_slices: Sequence[int] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    replay_dirs: Sequence[str | os.PathLike] | str = "auto",
    replay_rotate_k: int | None = None,
    device: str = "auto",
    seed: int = 0,
    store: Any = None,
    should_stop: Callable[[], bool] | None = None,
    segment_options: dict[str, Any] | None = None,
    **policy: Any,
) -> Generator[dict[str, Any], None, LearnResult]:
    """Fine-tune on ``train_slices`` of ``labels``, re-segment ``volume``; see the module doc.

    Args:
        volume: the CT (HU or 0..255) as read.
        labels: the current lesion labels, the volume's shape (non-zero = lesion).
        train_slices: source axial indices the user reviewed or corrected.
        model: a model name, version folder or ModelVersion (copied, never changed).
        protected_slices: slices whose labels are kept (default ``train_slices``).
        epochs, lr: override :data:`LEARN_DEFAULTS`.
        replay_dirs / replay_rotate_k: earlier training data to mix in; ``"auto"``:
            the model's own training data where it is on this computer (else none).
        policy: ``freeze_bn``, ``train``, ``l2sp``, ``replay_fraction`` (see
            :data:`.finetune.POLICY_DEFAULTS`).
    Yields:
        ``{"event": "start" | "epoch" | "batch" | "segment", ...}`` (trainer events,
        then ``{"event": "segment", "done", "total"}``).
    Raises:
        CancelledError: ``should_stop`` became true; nothing is returned.
        DatasetError: no slices, or a shape mismatch.
    """
    import copy

    from ..inference import iter_segment
    from ..models.checkpoint import ModelVersion, load_model_version
    from ..models.store import ModelStore
    from .config import TrainConfig
    from .datasets import load_datasets
    from .finetune import (
        FINETUNE_DEFAULTS,
        freeze_batchnorm,
        l2sp_hook,
        mix_replay,
        resolve_policy,
        set_trainable,
    )
    from .trainer import Trainer

    t0 = time.perf_counter()
    labels = np.asarray(labels)
    if labels.shape != volume.data.shape:
        raise DatasetError(
            f"the labels' shape {labels.shape} differs from the image's {volume.data.shape}"
        )
    if isinstance(model, ModelVersion):
        mv = copy.deepcopy(model)
    else:
        store = store if store is not None else ModelStore()
        mv = load_model_version(store.resolve(model), device="cpu")
    pol = resolve_policy(**policy)
    size = int(mv.preprocessing.get("input_size", 256))
    roi = mv.preprocessing.get("roi")
    data = volume_slices(volume, labels, train_slices, input_size=size, roi=roi)
    if replay_dirs == "auto":
        from .finetune_run import replay_suggestion

        found = replay_suggestion(mv.path) if mv.path is not None else None
        replay_dirs, replay_rotate_k = ([found[0]], found[1]) if found else ([], None)
    replay = None
    if replay_dirs:
        replay = load_datasets(
            list(replay_dirs), input_size=size, rotate_k=replay_rotate_k or 0, roi=roi
        )
    split = (np.arange(len(data)), np.zeros(0, dtype=np.int64), {"by": "none", "val_ids": []})
    data, split = mix_replay(
        data, replay, pol["replay_fraction"], 0.0, seed, split=split, min_replay=pol["min_replay"]
    )
    n_train = len(split[0])
    spe = LEARN_DEFAULTS["min_samples_per_epoch"]
    cfg = TrainConfig(**FINETUNE_DEFAULTS).replace(
        name="learn-in-volume",
        model=mv.config.name,
        input_size=size,
        epochs=epochs or LEARN_DEFAULTS["epochs"],
        lr=lr or LEARN_DEFAULTS["lr"],
        val_fraction=0.0,
        seed=seed,
        device=device,
        roi=roi or {"mode": "none"},
        guidance=mv.preprocessing.get("guidance"),
        samples_per_epoch=spe if n_train < spe else None,
        checkpoint_every=10_000,
    )
    timings: dict[str, float] = {"prepare": time.perf_counter() - t0}
    # no held-out comparison guards learning within a volume: "auto" keeps the base's BN
    unfreeze = freeze_batchnorm(mv.model) if pol["freeze_bn"] is not False else (lambda: None)
    set_trainable(mv.model, pol["train"])
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="covid-seg-learn-") as tmp:
        trainer = Trainer(
            cfg,
            out_dir=tmp,
            data=data,
            model=mv.model,
            register=False,
            should_stop=should_stop,
            split=split,
        )
        trainer._save_best = lambda: None  # type: ignore[method-assign]  # weights stay in memory
        if float(pol["l2sp"]) > 0:
            trainer.add_hook("on_batch_end", l2sp_hook(mv.model, float(pol["l2sp"])))
        try:
            result = yield from trainer.run()
        finally:
            unfreeze()
            set_trainable(mv.model, "all")
    if result.stopped == "cancelled" or (should_stop is not None and should_stop()):
        raise CancelledError("Learning in this volume was cancelled; the labels are unchanged")
    timings["train"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    mv.model.eval()
    gen = iter_segment(
        volume,
        mv,
        device=device,
        uncertainty=False,
        should_cancel=should_stop,
        **(segment_options or {}),
    )
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            seg = stop.value
            break
        yield {"event": "segment", "done": step.done, "total": step.total}
    timings["segment"] = time.perf_counter() - t2
    axis = seg.axial_axis
    protected = sorted({int(z) for z in (protected_slices or train_slices)})
    new = np.moveaxis(labels.copy(), axis, 0)
    pred = np.moveaxis(seg.mask, axis, 0)
    keep = np.zeros(new.shape[0], dtype=bool)
    keep[[z for z in protected if 0 <= z < len(keep)]] = True
    changed = [
        z
        for z in range(new.shape[0])
        if not keep[z] and not np.array_equal(new[z] != 0, pred[z] != 0)
    ]
    fill = pred.astype(new.dtype)
    new[~keep] = fill[~keep]
    timings["total"] = time.perf_counter() - t0
    return LearnResult(
        labels=np.moveaxis(new, 0, axis),
        changed_slices=changed,
        protected_slices=protected,
        n_train=n_train,
        n_replay=int(split[2].get("n_replay", 0)),
        epochs=result.epochs_run,
        timings={k: round(v, 2) for k, v in timings.items()},
        messages=list(seg.messages),
    )


def learn_in_volume(
    volume: Volume,
    labels: np.ndarray,
    train_slices: Sequence[int],
    model: Any = "default",
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> LearnResult:
    """Run :func:`iter_learn` to the end; ``progress(event)`` for each event."""
    gen = iter_learn(volume, labels, train_slices, model, **options)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event)
