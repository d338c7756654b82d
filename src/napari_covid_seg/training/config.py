"""Training configuration: one dataclass, read from YAML (``training/configs/*.yaml``).

Unknown keys are an error (a typo must not silently fall back to a default).
Command-line options override single fields via :meth:`TrainConfig.replace`.
This module does not import torch.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import DatasetError

#: Augmentation defaults (every probability/magnitude may be overridden in YAML).
DEFAULT_AUGMENT: dict[str, Any] = {
    "flip_lr": 0.5,  # probability of a left-right flip
    "flip_ud": 0.0,  # probability of an up-down flip (anterior-down never occurs in CT)
    "rot90": 0.0,  # probability of a random 90/180/270-degree rotation
    "affine": 0.0,  # probability of a small rotation / scaling / shift
    "rotate_deg": 15.0,  # max |rotation| in degrees
    "scale": [0.85, 1.2],  # zoom range
    "shift": 0.05,  # max |shift| as a fraction of the size
    "gamma": 0.0,  # probability of a gamma change
    "gamma_range": [0.7, 1.5],
    "brightness": 0.0,  # probability of a brightness offset
    "brightness_range": 0.1,  # max |offset| (intensities in [0, 1])
    "contrast": 0.0,  # probability of a contrast change
    "contrast_range": [0.75, 1.25],
    "noise": 0.0,  # probability of additive Gaussian noise
    "noise_std": 0.03,  # max noise standard deviation
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; see ``training/configs/*.yaml`` for examples.

    Data:
        data: dataset folders (nnU-Net v2 raw layout or 2D ``images/``+``masks/``).
        rotate_k: ``np.rot90`` k applied to 2D-folder slices (and masks) so they
            are anterior-up like inference slices (COVID-SemiSeg JPEGs: -1).
        lesion_labels: mask labels that count as lesion (multi-class masks);
            None = masks must be binary ({0, 1} or {0, 255}).
        input_size: slices are resized to ``input_size`` squared.
        roi: the lung-ROI policy (``{"mode": "lungs", "margin": 0.08}``, see
            :mod:`napari_covid_seg.inference.roi`): each slice is cut to the
            lungs' box plus margin, padded square, then resized; stored in the
            model's preprocessing so inference does the same. None or
            ``{"mode": "none"}``: whole slices, stretched (versions before 0.2).
        guidance: the click channels of a click model (``model.json``'s
            ``guidance``, see :mod:`napari_covid_seg.models.guidance`), or None.
            Training feeds them zeros (the automatic case) and the saved
            version keeps them, so a fine-tuned click model still takes clicks.
        val_fraction, split_seed: seeded validation split, by case where case
            ids exist, else by slice.
        lesion_oversample: minimum fraction of sampled training slices that
            contain lesion (volumes with many empty slices); 0 disables.
    Optimisation:
        optimizer: ``adam``, ``adamw`` or ``sgd``; lr, weight_decay.
        scheduler: ``none``, ``cosine`` (linear warmup then cosine to
            ``min_lr_ratio * lr``) or ``onecycle``; warmup_epochs.
        loss: ``bce``, ``dice`` or ``dice_bce``.
        amp: ``"off"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` (bf16 autocast where
            it is native: CUDA compute capability >= 8.0, CPUs with
            avx512_bf16/AMX; fp16 with a GradScaler on older GPUs; else fp32).
        patience: early stopping after this many epochs without a better
            validation score (None: never).
        time_budget_minutes: optional wall-time budget: the lr schedule advances
            by ``max(step / total_steps, elapsed / budget)`` and training ends
            when either reaches 1 (for shared or slow machines; not bit-reproducible).
        low_res_size, low_res_fraction: progressive resizing: for the first
            ``low_res_fraction`` of training (by epochs or time budget) batches
            are downsampled to ``low_res_size`` (4x cheaper at half size);
            validation always runs at ``input_size``.
        select_metric: validation metric that picks the best epoch (higher is
            better, or ``val_loss``: lower is better; ``last``: the last epoch,
            for fixed recipes whose validation slices are only watched).
    """

    name: str = "model"
    description: str = ""
    model: str = "res_att_unet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # data
    data: tuple[str, ...] = ()
    rotate_k: int = 0
    lesion_labels: tuple[int, ...] | None = None
    input_size: int = 256
    roi: dict[str, Any] | None = field(default_factory=lambda: {"mode": "lungs"})
    guidance: dict[str, Any] | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    lesion_oversample: float = 0.33
    samples_per_epoch: int | None = None
    # optimisation
    epochs: int = 200
    batch_size: int = 2
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: str = "none"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.01
    grad_clip: float | None = None
    loss: str = "bce"
    loss_kwargs: dict[str, float] = field(default_factory=dict)
    augment: dict[str, Any] | None = None
    # run
    seed: int = 0
    device: str = "auto"
    amp: str = "off"
    channels_last: bool = False
    num_threads: int | None = None
    patience: int | None = None
    time_budget_minutes: float | None = None
    low_res_size: int | None = None
    low_res_fraction: float = 0.0
    select_metric: str = "val_dice"
    threshold: float = 0.5
    val_batch_size: int = 8
    checkpoint_every: int = 1
    save_dtype: str = "float32"

    def __post_init__(self) -> None:
        data = self.data
        if isinstance(data, str | os.PathLike):
            data = (data,)
        object.__setattr__(self, "data", tuple(os.fspath(d) for d in data))
        if self.lesion_labels is not None:
            labels = self.lesion_labels
            if isinstance(labels, int):
                labels = (labels,)
            object.__setattr__(self, "lesion_labels", tuple(int(v) for v in labels))
        if self.roi is not None:
            roi = {"mode": "lungs", **dict(self.roi)}
            if roi["mode"] not in ("lungs", "none"):
                raise ValueError(f"roi mode must be 'lungs' or 'none', got {roi['mode']!r}")
            object.__setattr__(self, "roi", None if roi["mode"] == "none" else roi)
        if self.augment is not None:
            unknown = sorted(set(self.augment) - set(DEFAULT_AUGMENT))
            if unknown:
                raise ValueError(
                    f"Unknown augment keys {unknown}; expected some of {sorted(DEFAULT_AUGMENT)}"
                )
        amp = self.amp
        if isinstance(amp, bool):
            amp = "auto" if amp else "off"
        amp = str(amp).lower()
        if amp not in ("off", "bf16", "fp16", "auto"):
            raise ValueError(f"amp must be 'off', 'bf16', 'fp16' or 'auto', got {self.amp!r}")
        object.__setattr__(self, "amp", amp)
        if self.input_size % 32 or self.input_size < 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {self.input_size}")
        if self.low_res_size is not None and (
            self.low_res_size % 32 or not 32 <= self.low_res_size <= self.input_size
        ):
            raise ValueError(
                f"low_res_size must be a multiple of 32 up to input_size, got {self.low_res_size}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optimizer must be adam, adamw or sgd, got {self.optimizer!r}")
        if self.scheduler not in ("none", "cosine", "onecycle"):
            raise ValueError(f"scheduler must be none, cosine or onecycle, got {self.scheduler!r}")
        if self.save_dtype not in ("float32", "float16"):
            raise ValueError(f"save_dtype must be float32 or float16, got {self.save_dtype!r}")

    @property
    def augment_params(self) -> dict[str, Any] | None:
        """Augmentation settings merged over :data:`DEFAULT_AUGMENT` (None: no augmentation)."""
        if not self.augment:
            return None
        return {**DEFAULT_AUGMENT, **self.augment}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-serialisable dict (tuples become lists)."""
        d = asdict(self)
        d["data"] = list(self.data)
        if self.lesion_labels is not None:
            d["lesion_labels"] = list(self.lesion_labels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"Unknown training config keys {unknown}; expected some of {sorted(known)}"
            )
        return cls(**d)


def resolve_data_path(path: str | os.PathLike, config_file: Path | None = None) -> Path:
    """A dataset path as given, relative to the working folder or to the config's repo.

    Relative paths are tried against the current folder, the config file's
    folder and its two parents (so ``../shared/data/...`` in
    ``training/configs/x.yaml`` works from the repository root).
    """
    p = Path(os.path.expandvars(os.fspath(path))).expanduser()
    if p.is_absolute() or p.exists() or config_file is None:
        return p
    base = Path(config_file).resolve().parent
    for root in (base, *list(base.parents)[:2]):
        if (root / p).exists():
            return root / p
    return p


def load_config(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """Read a YAML training config; relative ``data`` paths are resolved (see above)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Training config {path} not found; see training/configs/*.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise DatasetError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path} must hold a mapping of training options")
    raw.pop("compare_models", None)
    data = raw.get("data", ())
    if isinstance(data, str):
        data = [data]
    raw["data"] = [os.fspath(resolve_data_path(d, path)) for d in data]
    try:
        cfg = TrainConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: {e}") from None
    return cfg.replace(**overrides)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The raw mapping of a YAML file (for extra keys such as ``compare_models``)."""
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
