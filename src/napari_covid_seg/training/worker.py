"""Fine-tuning in a subprocess: the entry point the Fine-tune widget runs (GUI-free).

::

    python -m napari_covid_seg.training.worker --base NAME_OR_PATH --data DIR [--data DIR2]
        [--epochs N] [--device D] [--replay DIR] [--name NAME] [--lr LR] [--batch-size B]
        [--min-samples-per-epoch N] [--amp auto|off|bf16] [--out RUN_DIR] [--stdin-control]

Runs :func:`~.finetune.finetune` and writes one JSON object per line on stdout
(the process's real stdout; anything else that prints is sent to stderr)::

    {"event": "loading", "base", "base_path", "data", "run_dir"}
    {"event": "start", "epochs", "n_train", "n_val", "device", "base", "name", "lr",
     "samples_per_epoch", "bf16"}
    {"event": "batch", "epoch", "epochs", "batch", "batches", "loss"}
    {"event": "epoch", "epoch", "epochs", "train_loss", "val_dice", "val_loss",
     "seconds_left", "best_epoch", "best_val_dice", "improved", "lr"}
    {"event": "comparing", "n_slices"}
    {"event": "done", "name", "path", "parent", "stopped", "run_dir",
     "metrics": {...}, "base_metrics": {...}, "comparison": {...}}
    {"event": "error", "kind", "message"}

``metrics`` are the child's last-epoch metrics on the held-out slices as
recorded by the trainer; ``comparison`` holds the base and the child scored by
the same code on those held-out slices, which neither version trained or was
selected on (``old_dice`` -> ``new_dice``; ``base_metrics`` is the base's
side); it is null when too few slices were corrected to hold any out.

Exit codes: 0 done; 1 a user error (:class:`~napari_covid_seg.errors.CovidSegError`,
a bad option, out of memory, or a cancel before the first epoch finished), with
one clear message in the error event; 2 an unexpected error (message in the
event, traceback on stderr).

Stopping: SIGTERM or SIGINT (and, with ``--stdin-control``, a ``stop`` line
on stdin or stdin closing because the parent died) ends training at the next
batch; the partial epoch is discarded and the best version so far is
registered. Before the first epoch finishes a stop ends in an ``error`` event
of kind ``CancelledError`` and nothing is registered.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from .finetune_run import (
    MAX_SAMPLES_PER_EPOCH,
    PASSES_PER_EPOCH,
    add_policy_arguments,
    count_slices,
    samples_per_epoch,
)

__all__ = ["count_slices", "main", "run", "samples_per_epoch"]

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_UNEXPECTED = 2

#: Metric keys copied from the trainer's best metrics into the done event.
_METRIC_KEYS = (
    "val_dice",
    "val_dice_mean",
    "val_iou",
    "val_precision",
    "val_sensitivity",
    "val_specificity",
    "val_accuracy",
    "val_loss",
    "val_slices",
    "train_loss",
    "best_epoch",
)


class StopFlag:
    """A thread- and signal-safe stop request (set by signals, stdin or the caller)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str = "stop requested") -> None:
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


class EventWriter:
    """Writes one JSON object per line to a stream and flushes it at once."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        text = json.dumps(_json_safe(event), allow_nan=False)
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()


def _json_safe(value: Any) -> Any:
    """Plain JSON values: NaN/inf -> None, numpy scalars -> Python, paths -> str."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _json_safe(value.item())
    return str(value)


def translate_event(event: dict[str, Any]) -> dict[str, Any] | None:
    """A Trainer event -> the worker's public event (None: not forwarded)."""
    kind = event.get("event")
    if kind == "start":
        return {
            "event": "start",
            "epochs": event.get("n_epochs"),
            "n_train": event.get("n_train"),
            "n_val": event.get("n_val"),
            "device": event.get("device"),
            "bf16": event.get("bf16"),
        }
    if kind == "comparing":
        return {"event": "comparing", "n_slices": event.get("n_slices")}
    if kind == "batch":
        return {
            "event": "batch",
            "epoch": event.get("epoch"),
            "epochs": event.get("n_epochs"),
            "batch": event.get("batch"),
            "batches": event.get("n_batches"),
            "loss": event.get("loss"),
        }
    if kind == "epoch":
        return {
            "event": "epoch",
            "epoch": event.get("epoch"),
            "epochs": event.get("n_epochs"),
            "train_loss": event.get("train_loss"),
            "val_dice": event.get("val_dice"),
            "val_loss": event.get("val_loss"),
            "seconds_left": event.get("seconds_left"),
            "best_epoch": event.get("best_epoch"),
            "best_val_dice": event.get("best_val_dice"),
            "improved": event.get("improved"),
            "lr": event.get("lr"),
        }
    return None


# -- running -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m napari_covid_seg.training.worker",
        description="Fine-tune a model version on corrected data; JSON events on stdout.",
    )
    p.add_argument("--base", required=True, help="model name ('default', ...) or folder path")
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="dataset folder written by 'Export for training' (repeatable)",
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument(
        "--min-samples-per-epoch",
        type=int,
        default=0,
        metavar="N",
        help="resample a small training set to N samples per epoch (0: one pass)",
    )
    p.add_argument(
        "--passes-per-epoch",
        type=int,
        default=PASSES_PER_EPOCH,
        metavar="P",
        help=f"with --min-samples-per-epoch: a small set is resampled to P passes per epoch "
        f"(at most {MAX_SAMPLES_PER_EPOCH} samples; default {PASSES_PER_EPOCH})",
    )
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--amp",
        default=None,
        choices=("auto", "off", "bf16", "fp16"),
        help="autocast: auto (bf16 where native, fp16 on older GPUs), off, bf16 or fp16 "
        "(default: auto)",
    )
    p.add_argument(
        "--replay",
        action="append",
        default=[],
        metavar="DIR",
        help="earlier training data to mix in (repeatable)",
    )
    p.add_argument(
        "--replay-fraction",
        type=float,
        default=None,
        help="share of replay slices in the training set (default 0.3)",
    )
    add_policy_arguments(p)
    p.add_argument(
        "--rotate-k",
        type=int,
        default=None,
        help="np.rot90 k for 2D slice folders (COVID-SemiSeg JPEGs: -1)",
    )
    p.add_argument("--replay-rotate-k", type=int, default=None)
    p.add_argument("--config", default=None, help="optional YAML with fine-tuning settings")
    p.add_argument("--name", default=None, help="store name of the new version")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="run folder (default: <store>/../runs/<name>-<time>)",
    )
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the run folder's best/ and last/ weights (default: removed once "
        "the version is registered; metrics.csv, curves.png, result.json stay)",
    )
    p.add_argument(
        "--stdin-control",
        action="store_true",
        help="stop cleanly on a 'stop' line on stdin or when stdin closes",
    )
    p.add_argument(
        "--no-compare",
        action="store_true",
        help="skip scoring base and child on the held-out slices",
    )
    return p


def _watch_stdin(stop: StopFlag, stream: IO[str]) -> None:
    """Set ``stop`` on a ``stop`` line or end of file (the parent closed the pipe or died)."""

    def run() -> None:
        try:
            for line in stream:
                if line.strip().lower() in ("stop", "cancel", "quit"):
                    stop.set("stop requested on stdin")
                    return
        except (OSError, ValueError):
            pass
        stop.set("stdin closed")

    threading.Thread(target=run, name="worker-stdin", daemon=True).start()


def _install_signal_handlers(stop: StopFlag) -> None:
    """SIGTERM/SIGINT set the flag instead of killing the process (outside training too)."""

    def handler(signum: int, frame: Any) -> None:
        stop.set(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def _is_out_of_memory(err: BaseException) -> bool:
    from ..inference.device import is_out_of_memory

    return is_out_of_memory(err)


def default_run_dir(name: str) -> Path:
    """``<store root>/../runs/<name>-<UTC time>`` (next to the user's model store)."""
    from ..models.store import default_store_root
    from .trainer import default_out_dir

    return default_out_dir(name, root=default_store_root().parent / "runs")


def run(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None], stop: StopFlag) -> int:
    """Fine-tune as ``args`` say, sending events to ``emit``; returns the exit code."""
    from ..errors import CancelledError, CovidSegError

    try:
        return _run(args, emit, stop)
    except CancelledError as err:
        emit({"event": "error", "kind": "CancelledError", "message": str(err)})
        return EXIT_USER_ERROR
    except (CovidSegError, ValueError) as err:
        emit({"event": "error", "kind": type(err).__name__, "message": str(err)})
        return EXIT_USER_ERROR
    except Exception as err:
        if _is_out_of_memory(err):
            device = getattr(args, "device", "auto")
            emit(
                {
                    "event": "error",
                    "kind": "OutOfMemoryError",
                    "message": f"Out of memory while fine-tuning on device {device!r}: lower the "
                    "batch size (--batch-size), use fewer or smaller cases, or use the CPU. "
                    "Nothing was registered; the previous model is unchanged.",
                }
            )
            return EXIT_USER_ERROR
        traceback.print_exc(file=sys.stderr)
        emit(
            {
                "event": "error",
                "kind": type(err).__name__,
                "message": f"Fine-tuning failed unexpectedly: {type(err).__name__}: {err}",
            }
        )
        return EXIT_UNEXPECTED


def _run(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None], stop: StopFlag) -> int:
    from ..models.checkpoint import load_model_version
    from ..models.store import ModelStore
    from .config import TrainConfig, load_config
    from .finetune import FINETUNE_DEFAULTS, finetune, resolve_policy

    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    store = ModelStore()
    base_path = store.resolve(args.base)
    base_meta = load_model_version(base_path, device="cpu")
    base_name = base_meta.name or Path(base_path).name
    base_metrics = dict(base_meta.metrics)
    del base_meta
    name = args.name or f"{base_name}-ft"
    config = load_config(args.config) if args.config else TrainConfig(**FINETUNE_DEFAULTS)
    config = config.replace(batch_size=args.batch_size, amp=args.amp)
    policy = resolve_policy(
        freeze_bn=args.freeze_bn,
        train=args.train_part,
        l2sp=args.l2sp,
        replay_fraction=args.replay_fraction,
    )
    spe = samples_per_epoch(
        args.data,
        args.min_samples_per_epoch,
        val_fraction=config.val_fraction,
        replay_fraction=policy["replay_fraction"],
        has_replay=bool(args.replay),
        passes=args.passes_per_epoch,
    )
    if spe is not None and config.samples_per_epoch is None:
        config = config.replace(samples_per_epoch=spe)
    out_dir = Path(args.out) if args.out else default_run_dir(name)
    emit(
        {
            "event": "loading",
            "base": base_name,
            "base_path": str(base_path),
            "data": [os.fspath(d) for d in args.data],
            "run_dir": str(out_dir),
        }
    )

    def forward(event: dict[str, Any]) -> None:
        public = translate_event(event)
        if public is None:
            return
        if public["event"] == "start":
            public.update(
                {
                    "base": base_name,
                    "name": name,
                    "lr": args.lr if args.lr is not None else "auto",
                    "samples_per_epoch": config.samples_per_epoch,
                }
            )
        emit(public)

    result = finetune(
        base_path,
        args.data,
        epochs=args.epochs,
        lr=args.lr,
        replay_dirs=args.replay,
        replay_fraction=policy["replay_fraction"],
        freeze_bn=policy["freeze_bn"],
        train=policy["train"],
        l2sp=policy["l2sp"],
        compare=not args.no_compare,
        config=config,
        name=name,
        out_dir=out_dir,
        device=args.device,
        rotate_k=args.rotate_k,
        replay_rotate_k=args.replay_rotate_k,
        patience=args.patience,
        seed=args.seed,
        store=store,
        progress=forward,
        should_stop=stop,
        handle_signals=True,
        return_result=True,
    )
    info = result.info
    split = _read_split(result)
    comparison = result.comparison
    if not args.keep_checkpoints:
        for sub in ("best", "last", ".last.old"):
            shutil.rmtree(Path(result.out_dir) / sub, ignore_errors=True)
    metrics = {k: result.best_metrics.get(k) for k in _METRIC_KEYS if k in result.best_metrics}
    metrics["best_epoch"] = result.best_epoch
    emit(
        {
            "event": "done",
            "name": None if info is None else info.name,
            "path": None if info is None else str(info.path),
            "parent": None if info is None else info.parent,
            "base": base_name,
            "base_path": str(base_path),
            "stopped": result.stopped,
            "epochs_run": result.epochs_run,
            "seconds": round(float(result.seconds), 2),
            "run_dir": str(result.out_dir),
            "metrics": metrics,
            "base_metrics": comparison["base"] if comparison else {},
            "base_recorded_metrics": {
                k: base_metrics[k] for k in _METRIC_KEYS if k in base_metrics
            },
            "comparison": comparison,
            "split": {k: split.get(k) for k in ("by", "n_train", "n_val", "n_replay")},
        }
    )
    return EXIT_OK


def _read_split(result: Any) -> dict[str, Any]:
    if result.result_json is None:
        return {}
    try:
        return dict(json.loads(Path(result.result_json).read_text(encoding="utf-8"))["split"])
    except (OSError, KeyError, ValueError, TypeError):
        return {}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv``, run, return the exit code (stdout carries only JSON lines)."""
    # Keep the JSON channel clean: events go to a private copy of stdout; anything
    # else written to stdout (by Python code or C libraries) lands on stderr.
    sys.stdout.flush()
    json_fd = os.dup(1)
    os.dup2(2, 1)
    json_stream = os.fdopen(json_fd, "w", encoding="utf-8", buffering=1)
    sys.stdout = sys.stderr
    emit = EventWriter(json_stream)
    stop = StopFlag()
    _install_signal_handlers(stop)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        code = int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USER_ERROR
        if code:
            emit(
                {
                    "event": "error",
                    "kind": "UsageError",
                    "message": "Bad worker arguments; see the usage on stderr",
                }
            )
            return EXIT_USER_ERROR
        return EXIT_OK
    if args.stdin_control:
        _watch_stdin(stop, sys.stdin)
    try:
        return run(args, emit, stop)
    finally:
        json_stream.flush()


if __name__ == "__main__":
    sys.exit(main())
