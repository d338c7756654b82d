"""The fit loop: a short, linear :class:`Trainer` with named hooks.

One epoch = sample slice indices (seeded per epoch, lesion slices
oversampled where needed) -> augment -> forward (optionally bf16 autocast,
channels_last) -> loss -> step (scheduler per step) -> validate -> record
metrics (CSV, optional TensorBoard) -> keep the best model version -> write
the resumable checkpoint. Hooks: ``on_train_start``, ``on_epoch_start``,
``on_batch_end``, ``on_validation_end``, ``on_epoch_end``, ``on_best``,
``on_train_end``; each is called as ``hook(trainer, event_dict)``.

Output folder (``out_dir``)::

    config.yaml     the resolved training config
    metrics.csv     one row per epoch (losses, validation metrics, lr, seconds)
    curves.png      loss and Dice curves (written at the end)
    best/           the best model version (models.checkpoint.save_model_version, atomic)
    last/           resumable state: model.safetensors + state.pt (optimizer, scheduler,
                    epoch, RNG, history; plain tensors/dicts, loaded with weights_only=True)
    result.json     split, best metrics, timing, stop reason, registered version

Cancel: a ``should_stop()`` callback (checked between batches) or SIGINT/SIGTERM
(``handle_signals=True``) ends training at the next batch; the partial epoch is
discarded and the best version so far is registered. Distributed: under
``torchrun`` (or with a process group already initialised) the model is wrapped
in DDP; the epoch's sample order is padded to a multiple of the world size and
dealt out (:func:`.ddp.shard`), so every rank runs the same number of steps;
BatchNorm statistics are copied from rank 0 after each epoch, validation
metrics are pooled over the ranks, only rank 0 writes files, and rank 0 picks
the checkpoint a resumed run starts from.

Device, precision and out-of-memory policy come from
:mod:`napari_covid_seg.inference.device` (bf16 where native, fp16 with a
GradScaler on older GPUs, fp32 elsewhere).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CancelledError, DatasetError, OutOfMemoryError
from ..inference import device as devices
from ..inference.device import cpu_supports_bf16 as cpu_has_fast_bf16  # noqa: F401 (old name)
from ..io.atomic import atomic_write_text
from . import ddp
from .augment import augment_batch
from .config import TrainConfig
from .datasets import SliceDataset, epoch_indices, load_datasets, split_dataset
from .losses import build_loss
from .metrics import METRIC_NAMES, MetricAccumulator

HOOK_NAMES: tuple[str, ...] = (
    "on_train_start",
    "on_epoch_start",
    "on_batch_end",
    "on_validation_end",
    "on_epoch_end",
    "on_best",
    "on_train_end",
)

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a finished (or cancelled / early-stopped) run produced."""

    out_dir: Path
    best_dir: Path | None
    best_epoch: int
    best_metrics: dict[str, Any]
    epochs_run: int
    stopped: str  # "completed", "early_stopping", "time_budget", "cancelled"
    history: list[dict[str, Any]] = field(default_factory=list)
    info: Any = None  # models.store.ModelInfo of the registered version
    result_json: Path | None = None
    seconds: float = 0.0
    comparison: dict[str, Any] | None = None  # set by fine-tuning: base vs child, held out


# -- small helpers -------------------------------------------------------------------------------


def resolve_device(spec: str, dist_info: ddp.DistInfo | None = None) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> torch.device (DeviceError if unavailable).

    ``auto`` trains on CUDA when present, else on the CPU; in a multi-process
    job ``auto``/``cuda`` mean ``cuda:LOCAL_RANK``.
    """
    spec = (spec or "auto").lower()
    if spec == "auto":
        spec = "cuda" if devices.cuda_available() else "cpu"
    if spec == "cuda" and dist_info is not None and dist_info.world_size > 1:
        spec = f"cuda:{dist_info.local_rank}"
    return devices.resolve_device(spec)


def use_bf16(amp: str, device: torch.device) -> bool:
    """Whether to autocast to bf16 for an ``amp`` setting on ``device``."""
    return devices.training_dtype(amp, device) is torch.bfloat16


def _seed_for(seed: int, epoch: int, rank: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729 + stream) % (2**63 - 1)


def lr_factor(
    config: TrainConfig,
    step: int,
    total_steps: int,
    steps_per_epoch: int,
    time_fraction: float = 0.0,
) -> float:
    """Multiplier of the base lr at optimisation ``step`` (0-based).

    ``time_fraction`` (elapsed / time budget) moves the schedule ahead when a
    wall-time budget is set: progress is ``max(step / total, time_fraction)``.
    """
    total = max(1, total_steps)
    if config.scheduler == "none":
        return 1.0
    floor = float(config.min_lr_ratio)
    if config.scheduler == "onecycle":
        warm = max(1, round(0.3 * total))
        start = 1.0 / 25.0
    else:
        warm = round(config.warmup_epochs * steps_per_epoch)
        start = 0.01
    progress = max(step / total, float(time_fraction))
    warm_frac = warm / total
    if progress < warm_frac:
        return start + (1.0 - start) * progress / warm_frac
    t = (progress - warm_frac) / max(1e-12, 1.0 - warm_frac)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


# -- the trainer ---------------------------------------------------------------------------------


class Trainer:
    """Train one model on one dataset; see the module docstring.

    Args:
        config: the training configuration.
        out_dir: run folder (created); reused when ``resume=True``.
        data: preloaded slices (default: loaded from ``config.data``).
        model: start from this module (fine-tuning); default a fresh
            ``build_model(config.model, **config.model_kwargs)``.
        parent: provenance parent (name or path of the base version).
        provenance: extra provenance fields (e.g. replay data).
        register: register the best version in ``store`` at the end.
        store: a ``models.store.ModelStore`` (default: the user's store).
        progress: called with each event dict (``event`` = ``start``,
            ``batch``, ``epoch``, ``end``).
        should_stop: polled between batches; True ends training cleanly.
        handle_signals: turn SIGINT/SIGTERM into a clean stop (main thread only).
        resume: continue from ``out_dir/last`` if it exists.
        split: precomputed ``(train_index, val_index, record)``.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        out_dir: str | os.PathLike,
        data: SliceDataset | None = None,
        model: nn.Module | None = None,
        parent: str | None = None,
        provenance: dict[str, Any] | None = None,
        register: bool = True,
        register_name: str | None = None,
        store: Any = None,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
        handle_signals: bool = False,
        resume: bool = False,
        split: tuple[np.ndarray, np.ndarray, dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.data = data
        self._init_model = model
        self.parent = parent
        self.extra_provenance = dict(provenance or {})
        self.register = register
        self.register_name = register_name
        self.store = store
        self.progress = progress
        self.should_stop = should_stop
        self.handle_signals = handle_signals
        self.resume = resume
        self._split = split
        self.hooks: dict[str, list[Callable[[Trainer, dict[str, Any]], None]]] = {
            name: [] for name in HOOK_NAMES
        }
        self._stop_requested = False
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # last completed epoch (1-based count)
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_metrics: dict[str, Any] = {}
        self.stale_epochs = 0
        self.elapsed = 0.0
        self._t_start: float | None = None

    # -- hooks -------------------------------------------------------------------------------

    def add_hook(self, name: str, fn: Callable[[Trainer, dict[str, Any]], None]) -> None:
        """Call ``fn(trainer, event)`` at ``name`` (one of :data:`HOOK_NAMES`)."""
        if name not in self.hooks:
            raise ValueError(f"Unknown hook {name!r}; choose one of {', '.join(HOOK_NAMES)}")
        self.hooks[name].append(fn)

    def _fire(self, name: str, event: dict[str, Any]) -> None:
        for fn in self.hooks[name]:
            fn(self, event)

    def request_stop(self) -> None:
        """Ask the loop to stop at the next batch (thread-safe flag)."""
        self._stop_requested = True

    def _stopping(self) -> bool:
        if self._stop_requested:
            return True
        if self.should_stop is not None and self.should_stop():
            self._stop_requested = True
        return self._stop_requested

    # -- entry points ------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Run to the end; events go to ``progress``. Returns the :class:`TrainResult`."""
        gen = self.run()
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def run(self) -> Generator[dict[str, Any], None, TrainResult]:
        """Generator form of :meth:`fit`: yields each event dict, returns the result."""
        with self._signal_handlers():
            result = yield from self._run()
        return result

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {}

        def handler(signum: int, frame: Any) -> None:
            self._stop_requested = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)

    def _emit(self, event: dict[str, Any]) -> dict[str, Any]:
        if self.progress is not None and self.dist.is_main:
            self.progress(event)
        return event

    # -- setup -------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.config
        if ddp.launched_by_torchrun() and not ddp.current().enabled:
            dev_type = "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
            self.dist = ddp.init_from_env(dev_type)
        else:
            self.dist = ddp.current()
        self.device = resolve_device(cfg.device, self.dist)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        # One run folder for all ranks (a default name holds a timestamp that may differ);
        # after set_device: NCCL object collectives use the current GPU.
        self.out_dir = Path(ddp.broadcast_object(str(self.out_dir), self.dist))
        if cfg.num_threads:
            torch.set_num_threads(int(cfg.num_threads))
        self.amp_dtype = devices.training_dtype(cfg.amp, self.device)
        self.bf16 = self.amp_dtype is torch.bfloat16
        self.scaler = devices.grad_scaler(self.amp_dtype, self.device)
        if self.data is None:
            self.data = load_datasets(
                cfg.data,
                input_size=cfg.input_size,
                rotate_k=cfg.rotate_k,
                lesion_labels=cfg.lesion_labels,
                roi=cfg.roi,
            )
        if len(self.data) == 0:
            raise DatasetError("The dataset is empty")
        if self.data.images.shape[1:] != (cfg.input_size, cfg.input_size):
            raise DatasetError(
                f"Slices are {self.data.images.shape[1:]} but the config's input_size is "
                f"{cfg.input_size}"
            )
        self.train_idx, self.val_idx, self.split_record = self._split or split_dataset(
            self.data, cfg.val_fraction, cfg.split_seed
        )
        if len(self.train_idx) == 0:
            raise DatasetError("No training slices left after the validation split")
        self.images = torch.from_numpy(np.ascontiguousarray(self.data.images))
        self.masks = torch.from_numpy(np.ascontiguousarray(self.data.masks))
        self.train_has_lesion = self.data.has_lesion[self.train_idx]
        # model
        if self._init_model is not None:
            model = self._init_model
        else:
            from ..models import build_model

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model = build_model(cfg.model, **cfg.model_kwargs)
        self.model_config = _unwrap(model).config
        model = model.to(self.device).to(memory_format=devices.memory_format(cfg.channels_last))
        self.raw_model = model
        if self.dist.enabled:  # also at world size 1 (tests exercise the DDP path)
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model: nn.Module = DDP(model, device_ids=ids)
        else:
            self.model = model
        # optimisation
        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=cfg.lr, weight_decay=cfg.weight_decay
            )
        elif cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(
                params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        n_samples = cfg.samples_per_epoch or len(self.train_idx)
        per_rank = math.ceil(n_samples / self.dist.world_size)
        self.n_samples = n_samples
        self.steps_per_epoch = self._n_batches(per_rank)
        total = cfg.epochs * self.steps_per_epoch
        spe = self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(cfg, step, total, spe, self._time_fraction())
        )
        self.loss_fn = build_loss(cfg.loss, **cfg.loss_kwargs)
        self.augment = cfg.augment_params
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        ddp.barrier(self.dist)
        self.tb = self._tensorboard()

    def _time_fraction(self) -> float:
        budget = self.config.time_budget_minutes
        if not budget or self._t_start is None:
            return 0.0
        return (time.perf_counter() - self._t_start) / (60.0 * float(budget))

    def _low_res(self, epoch: int) -> int | None:
        """Training size for this epoch when progressive resizing is on, else None."""
        cfg = self.config
        if not cfg.low_res_size or cfg.low_res_size == cfg.input_size:
            return None
        progress = max((epoch - 1) / cfg.epochs, self._time_fraction())
        return cfg.low_res_size if progress < cfg.low_res_fraction else None

    def _n_batches(self, n: int) -> int:
        return ddp.n_batches(n, self.config.batch_size)

    def _tensorboard(self) -> Any:
        if not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: CSV only
            return None
        return SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))

    # -- checkpoint --------------------------------------------------------------------------

    @property
    def last_dir(self) -> Path:
        return self.out_dir / "last"

    @property
    def best_dir(self) -> Path:
        return self.out_dir / "best"

    def save_checkpoint(self) -> Path:
        """Write ``out_dir/last`` (weights + state) via a temp folder and renames."""
        from safetensors.torch import save_file

        tmp = Path(tempfile.mkdtemp(prefix=".last.", suffix=".tmp", dir=self.out_dir))
        try:
            save_file(_state_dict_cpu(self.raw_model), str(tmp / "model.safetensors"))
            state = {
                "epoch": self.epoch,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "best_score": self.best_score,
                "best_epoch": self.best_epoch,
                "best_metrics": self.best_metrics,
                "stale_epochs": self.stale_epochs,
                "elapsed": self.elapsed,
                "history": self.history,
                "rng_torch": torch.get_rng_state(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "architecture": self.model_config.to_dict(),
                "config": self.config.to_dict(),
            }
            buf = io.BytesIO()
            torch.save(state, buf)
            (tmp / "state.pt").write_bytes(buf.getvalue())
            old = self.out_dir / ".last.old"
            if old.exists():
                shutil.rmtree(old, ignore_errors=True)
            if self.last_dir.exists():
                os.replace(self.last_dir, old)
            os.replace(tmp, self.last_dir)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.last_dir

    def load_checkpoint(self, folder: Path) -> None:
        """Restore model, optimizer, scheduler, counters, history and RNG from ``folder``."""
        from safetensors.torch import load_file

        weights = load_file(str(folder / "model.safetensors"), device="cpu")
        self.raw_model.load_state_dict(weights, strict=True)
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.best_metrics = dict(state["best_metrics"])
        self.stale_epochs = int(state["stale_epochs"])
        self.elapsed = float(state["elapsed"])
        self.history = list(state["history"])
        torch.set_rng_state(state["rng_torch"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def _find_resume(self) -> Path | None:
        for cand in (self.last_dir, self.out_dir / ".last.old"):
            if (cand / "state.pt").is_file() and (cand / "model.safetensors").is_file():
                return cand
        return None

    # -- one epoch ---------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index].float()[:, None]
        y = self.masks[index].float()[:, None]
        return x, y

    def _to_input(self, x: torch.Tensor) -> torch.Tensor:
        from ..models.guidance import model_input

        x = model_input(
            x.to(self.device, non_blocking=True),
            self.model_config.in_channels,
            {"guidance": self.config.guidance},
        )
        return x.contiguous(memory_format=devices.memory_format(self.config.channels_last))

    def train_epoch(self, epoch: int) -> Generator[dict[str, Any], None, float | None]:
        """One pass over the sampled training slices; returns the mean loss (None if stopped)."""
        cfg = self.config
        g_sample = torch.Generator().manual_seed(_seed_for(cfg.seed, epoch, 0, 1))
        g_aug = torch.Generator().manual_seed(_seed_for(cfg.seed, epoch, self.dist.rank, 2))
        order = epoch_indices(
            self.train_has_lesion, self.n_samples, cfg.lesion_oversample, g_sample
        )
        # Padded to a multiple of the world size: every rank runs the same number of steps.
        mine = ddp.shard(order, self.dist.rank, self.dist.world_size)
        train_idx = torch.as_tensor(self.train_idx)[torch.as_tensor(mine)]
        batches = ddp.split_batches(train_idx, cfg.batch_size)
        low_res = self._low_res(epoch)
        self.train_size = low_res or cfg.input_size
        self.model.train()
        total, count = 0.0, 0
        for b, index in enumerate(batches):
            stop = ddp.broadcast_flag(self._stopping(), self.dist, self.device)
            if stop:
                return None
            x, y = self._batch(index)
            if self.augment:
                x, y = augment_batch(x, y, self.augment, g_aug)
            if low_res:
                x = F.interpolate(x, size=(low_res, low_res), mode="bilinear", align_corners=False)
                y = F.interpolate(y, size=(low_res, low_res), mode="bilinear", align_corners=False)
                y = (y >= 0.5).float()
            x = self._to_input(x)
            y = y.to(self.device, non_blocking=True)
            out_of_memory = False
            try:
                loss = self._step(x, y)
            except Exception as err:
                if not devices.is_out_of_memory(err):
                    raise
                out_of_memory = True
            if out_of_memory:  # outside the except block: the traceback holds the tensors
                del x, y
                devices.free_device_memory(self.device)
                raise OutOfMemoryError(
                    f"Out of memory on {self.device} while training at batch size "
                    f"{cfg.batch_size} and {self.train_size} px: lower the batch size "
                    "(--batch-size), train at a smaller input size, or use the CPU"
                )
            self.scheduler.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DatasetError(
                    f"The training loss became {value} at epoch {epoch}; lower the learning "
                    "rate or check the data for invalid values"
                )
            total += value * len(index)
            count += len(index)
            event = {
                "event": "batch",
                "epoch": epoch,
                "n_epochs": cfg.epochs,
                "batch": b + 1,
                "n_batches": len(batches),
                "loss": value,
            }
            self._fire("on_batch_end", event)
            yield self._emit(event)
        sums = ddp.all_reduce_sum([total, count], self.dist, self.device)
        ddp.broadcast_buffers(_unwrap(self.model), self.dist)
        return sums[0] / max(1.0, sums[1])

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward, loss, backward and optimizer step (GradScaler for fp16); returns the loss."""
        cfg = self.config
        with self._autocast():
            logits = self.model(x)
        loss = self.loss_fn(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            return loss
        self.scaler.scale(loss).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Validation loss and metrics (pooled and per-slice mean) at the threshold."""
        model = _unwrap(self.model)
        model.eval()
        idx = torch.as_tensor(self.val_idx)[self.dist.rank :: self.dist.world_size]
        acc = MetricAccumulator()
        loss_sum, n = 0.0, 0
        bs = self.config.val_batch_size
        for i in range(0, len(idx), bs):
            x, y = self._batch(idx[i : i + bs])
            x = self._to_input(x)
            y = y.to(self.device)
            with self._autocast():
                logits = model(x)
            logits = logits.float()
            loss_sum += float(self.loss_fn(logits, y)) * len(x)
            n += len(x)
            acc.update(torch.sigmoid(logits) > self.config.threshold, y)
        gathered = ddp.all_gather_objects((acc.all_counts, loss_sum, n), self.dist)
        total = MetricAccumulator()
        loss_total, n_total = 0.0, 0
        for counts, ls, k in gathered:
            total.add_counts(counts)
            loss_total += ls
            n_total += k
        m = total.compute()
        out: dict[str, Any] = {"val_loss": loss_total / max(1, n_total)}
        for name in METRIC_NAMES:
            out[f"val_{name}"] = m[name]
            out[f"val_{name}_mean"] = m[f"{name}_mean"]
        out["val_slices"] = m["n_slices"]
        return out

    # -- the loop ----------------------------------------------------------------------------

    def _score(self, record: dict[str, Any]) -> float:
        key = self.config.select_metric
        if key == "last":  # a fixed recipe: keep the last epoch (validation only watched)
            return float(record["epoch"])
        if not len(self.val_idx):
            return -record["train_loss"]
        if key == "val_loss":
            return -record["val_loss"]
        if key not in record:
            raise ValueError(f"select_metric {key!r} is not a validation metric")
        return float(record[key])

    def _run(self) -> Generator[dict[str, Any], None, TrainResult]:
        cfg = self.config
        self._setup()
        start_epoch = 1
        if self.resume:
            # Rank 0 chooses, so every rank loads the same checkpoint.
            found = ddp.broadcast_object(
                self._find_resume() if self.dist.is_main else None, self.dist
            )
            if found is not None:
                self.load_checkpoint(found)
                start_epoch = self.epoch + 1
        if self.dist.is_main:
            import yaml

            atomic_write_text(
                self.out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            )
        t_start = time.perf_counter() - self.elapsed
        self._t_start = t_start
        event = {
            "event": "start",
            "epoch": self.epoch,
            "n_epochs": cfg.epochs,
            "n_train": len(self.train_idx),
            "n_val": len(self.val_idx),
            "device": str(self.device),
            "bf16": self.bf16,
            "precision": devices.precision_name(self.amp_dtype),
            "world_size": self.dist.world_size,
            "resumed_from": self.epoch if start_epoch > 1 else None,
        }
        self._fire("on_train_start", event)
        yield self._emit(event)
        stopped = "completed"
        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            self._fire("on_epoch_start", {"epoch": epoch})
            train_loss = yield from self.train_epoch(epoch)
            if train_loss is None:
                stopped = "cancelled"
                break
            record: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
            record["train_size"] = self.train_size
            if len(self.val_idx):
                record.update(self.validate())
                self._fire("on_validation_end", record)
            record["lr"] = self.optimizer.param_groups[0]["lr"]
            record["seconds"] = time.perf_counter() - t0
            self.epoch = epoch
            self.elapsed = time.perf_counter() - t_start
            self.history.append(record)
            score = self._score(record)
            improved = score > self.best_score
            if improved:
                self.best_score, self.best_epoch = score, epoch
                self.best_metrics = {k: v for k, v in record.items() if k.startswith("val_")}
                self.best_metrics["train_loss"] = train_loss
                if self.dist.is_main:
                    self._save_best()
                self._fire("on_best", record)
                self.stale_epochs = 0
            else:
                self.stale_epochs += 1
            if self.dist.is_main:
                self._write_csv()
                if self.tb is not None:
                    for k, v in record.items():
                        if isinstance(v, float) and k != "epoch":
                            self.tb.add_scalar(k, v, epoch)
                if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                    self.save_checkpoint()
            ddp.barrier(self.dist)
            per_epoch = float(np.mean([h["seconds"] for h in self.history[-5:]]))
            seconds_left = per_epoch * (cfg.epochs - epoch)
            if cfg.time_budget_minutes:
                budget_left = 60.0 * cfg.time_budget_minutes - self.elapsed
                seconds_left = max(0.0, min(seconds_left, budget_left))
            event = {
                "event": "epoch",
                "epoch": epoch,
                "n_epochs": cfg.epochs,
                "train_loss": train_loss,
                "val_loss": record.get("val_loss"),
                "val_dice": record.get("val_dice"),
                "best_epoch": self.best_epoch,
                "best_val_dice": self.best_metrics.get("val_dice"),
                "improved": improved,
                "lr": record["lr"],
                "epoch_seconds": record["seconds"],
                "seconds_left": seconds_left,
            }
            self._fire("on_epoch_end", event)
            yield self._emit(event)
            if cfg.patience is not None and self.stale_epochs >= cfg.patience:
                stopped = "early_stopping"
                break
            if ddp.broadcast_flag(self._stopping(), self.dist, self.device):
                stopped = "cancelled"
                break
            if ddp.broadcast_flag(self._time_fraction() >= 1.0, self.dist, self.device):
                stopped = "time_budget"
                break
        result = self._finish(stopped, time.perf_counter() - t_start)
        event = {
            "event": "end",
            "stopped": stopped,
            "epoch": self.epoch,
            "n_epochs": cfg.epochs,
            "best_epoch": self.best_epoch,
            "best_val_dice": self.best_metrics.get("val_dice"),
            "model": str(result.info.path) if result.info is not None else None,
            "seconds_left": 0.0,
        }
        self._fire("on_train_end", event)
        yield self._emit(event)
        return result

    # -- outputs -----------------------------------------------------------------------------

    def provenance(self) -> dict[str, Any]:
        """Provenance recorded in the model version's model.json."""
        assert self.data is not None
        prov = {
            "parent": self.parent,
            "data_fingerprint": self.data.fingerprint,
            "data": [
                {
                    k: v
                    for k, v in s.items()
                    if k in ("path", "layout", "n_slices", "n_cases", "fingerprint", "rotate_k")
                }
                for s in self.data.sources
            ],
            "epochs": self.epoch,
            "best_epoch": self.best_epoch,
            "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "config": self.config.to_dict(),
            "split": {k: v for k, v in self.split_record.items()},
            "device": str(self.device),
            "bf16_autocast": self.bf16,
            "world_size": self.dist.world_size,
            "training_seconds": round(self.elapsed, 1),
        }
        prov.update(self.extra_provenance)
        return prov

    def _preprocessing(self) -> dict[str, Any]:
        from ..inference.preprocess import default_preprocessing

        pre = default_preprocessing()
        pre["input_size"] = self.config.input_size
        pre["n_channels"] = self.model_config.in_channels
        pre["threshold"] = self.config.threshold
        if self.config.roi is not None:
            from ..inference.roi import roi_spec

            pre["roi"] = roi_spec({"roi": self.config.roi})
        if self.config.guidance:
            from ..models.guidance import guidance_spec

            pre["guidance"] = guidance_spec({"guidance": self.config.guidance})
        return pre

    def _save_best(self) -> None:
        from ..models.checkpoint import save_model_version

        metrics = {k: v for k, v in self.best_metrics.items()}
        metrics["best_epoch"] = self.best_epoch
        save_model_version(
            self.best_dir,
            _unwrap(self.raw_model),
            preprocessing=self._preprocessing(),
            provenance=self.provenance(),
            metrics=metrics,
            name=self.register_name or self.config.name,
            description=self.config.description,
            dtype=self.config.save_dtype,
            overwrite=True,
        )

    def _write_csv(self) -> None:
        keys: list[str] = []
        for rec in self.history:
            keys += [k for k in rec if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        for rec in self.history:
            w.writerow({k: rec.get(k, "") for k in keys})
        atomic_write_text(self.out_dir / "metrics.csv", buf.getvalue())

    def _finish(self, stopped: str, seconds: float) -> TrainResult:
        import json

        if self.tb is not None:
            self.tb.close()
        if self.best_epoch == 0:
            raise CancelledError(
                "Training was stopped before the first epoch finished; no model was saved"
            )
        info = None
        result_json = None
        if self.dist.is_main:
            if self.history:
                from .plots import plot_history

                plot_history(self.history, self.out_dir / "curves.png", title=self.config.name)
            if self.register:
                from ..models.store import ModelStore

                store = self.store if self.store is not None else ModelStore()
                info = store.register(self.best_dir, name=self.register_name or self.config.name)
            result = {
                "name": self.register_name or self.config.name,
                "model": self.model_config.name,
                "stopped": stopped,
                "epochs_run": self.epoch,
                "best_epoch": self.best_epoch,
                "best_metrics": self.best_metrics,
                "split": self.split_record,
                "seconds": round(seconds, 1),
                "seconds_per_epoch": round(seconds / max(1, len(self.history)), 2),
                "device": str(self.device),
                "bf16_autocast": self.bf16,
                "world_size": self.dist.world_size,
                "parent": self.parent,
                "data_fingerprint": self.data.fingerprint if self.data is not None else None,
                "best_dir": str(self.best_dir),
                "registered": None if info is None else {"name": info.name, "path": str(info.path)},
                "config": self.config.to_dict(),
            }
            from ..models.metadata import dumps

            result_json = self.out_dir / "result.json"
            atomic_write_text(result_json, dumps(json.loads(dumps(result))))
        ddp.barrier(self.dist)
        return TrainResult(
            out_dir=self.out_dir,
            best_dir=self.best_dir,
            best_epoch=self.best_epoch,
            best_metrics=dict(self.best_metrics),
            epochs_run=self.epoch,
            stopped=stopped,
            history=list(self.history),
            info=info,
            result_json=result_json,
            seconds=seconds,
        )


def default_out_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """``<root or ./runs>/<name>-<UTC timestamp>``."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(root or "runs") / f"{name}-{stamp}"


def train(
    config: TrainConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Train a model from ``config`` (see :class:`Trainer` for the keyword arguments)."""
    out = Path(out_dir) if out_dir is not None else default_out_dir(config.name)
    trainer = Trainer(config, out_dir=out, progress=progress, should_stop=should_stop, **kwargs)
    return trainer.fit()
