"""Fine-tuning run control without Qt: what the Fine-tune widget shows and decides.

The widget (``_widgets/finetune.py``) only shows and forwards; everything
else lives here and is tested without a display: counting a dataset's slices
(:func:`count_slices`), the worker's command line (:func:`worker_arguments`),
reading its JSON events (:class:`RunState`), the text for each event
(:func:`event_status`), and whether to switch to the new version
(:func:`decide_switch`: only on a comparison on held-out slices; no comparison,
no automatic switch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Devices offered (the worker says clearly when one is not available).
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DEFAULT_EPOCHS = 10
#: Learning rates offered, the default first (docs/loop_experiment.md).
#: "auto": 1e-4, or 3e-5 with fewer than 5 corrected slices (training.finetune).
LEARNING_RATES: tuple[str, ...] = ("auto", "1e-4", "3e-5", "3e-4", "1e-5")
#: A few corrected slices are resampled (augmented) to PASSES_PER_EPOCH passes per
#: epoch, between MIN_ and MAX_SAMPLES_PER_EPOCH samples (docs/loop_experiment.md).
MIN_SAMPLES_PER_EPOCH = 16
MAX_SAMPLES_PER_EPOCH = 64
PASSES_PER_EPOCH = 8


# -- dataset size without loading it -----------------------------------------------------------


def count_slices(folder: str | os.PathLike) -> dict[str, Any]:
    """Cases and training slices of a dataset folder, from JSON and NIfTI headers only.

    nnU-Net v2 raw (what "Export for training" writes): cases = label files;
    slices = a case's ``reviewed_slices`` where ``reviewed.json`` lists them,
    else every slice along its axial axis. 2D folders: one case per image.
    Returns ``{"layout", "n_cases", "n_slices", "n_reviewed_cases", "problem"}``
    (``problem`` is "" or says why the folder cannot be used).
    """
    from ..io.images2d import IMAGE_SUFFIXES

    root = Path(folder)
    out: dict[str, Any] = {
        "layout": "",
        "n_cases": 0,
        "n_slices": 0,
        "n_reviewed_cases": 0,
        "problem": "",
    }
    if not root.is_dir():
        out["problem"] = "folder does not exist"
        return out
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        import nibabel as nib

        out["layout"] = "nnunet_v2"
        try:
            reviewed = json.loads((root / "reviewed.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            reviewed = {}
        reviewed = reviewed if isinstance(reviewed, dict) else {}
        for lab in sorted((root / "labelsTr").iterdir()):
            if not lab.name.endswith(".nii.gz"):
                continue
            case = lab.name[: -len(".nii.gz")]
            out["n_cases"] += 1
            entry = reviewed.get(case)
            if isinstance(entry, dict) and entry.get("reviewed_slices") is not None:
                out["n_reviewed_cases"] += 1
                out["n_slices"] += len(set(entry["reviewed_slices"]))
                continue
            try:
                shape = nib.load(str(lab)).shape  # (i, j, k): the header only
            except Exception:
                out["problem"] = f"cannot read {lab.name}"
                return out
            axis = int(entry.get("axial_axis", 0) or 0) if isinstance(entry, dict) else 0
            zyx = tuple(reversed(shape[:3]))
            out["n_slices"] += int(zyx[axis]) if len(zyx) == 3 else 1
        if not out["n_cases"]:
            out["problem"] = "no cases in labelsTr/"
        return out
    if (root / "images").is_dir() and (root / "masks").is_dir():
        out["layout"] = "slices2d"
        out["n_slices"] = out["n_cases"] = sum(
            1 for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not out["n_slices"]:
            out["problem"] = "no images in images/"
        return out
    out["problem"] = "not a dataset (expected imagesTr/ + labelsTr/ from 'Export for training')"
    return out


def samples_per_epoch(
    data_dirs: Sequence[str | os.PathLike],
    minimum: int,
    *,
    val_fraction: float,
    replay_fraction: float,
    has_replay: bool,
    passes: int = 1,
    maximum: int = MAX_SAMPLES_PER_EPOCH,
) -> int | None:
    """Samples per epoch for a small training set, else None (one pass).

    A handful of corrected slices would otherwise give one optimizer step per
    epoch: they are resampled (with augmentation) to ``passes`` times the
    corrected training slices, at least ``minimum`` and at most ``maximum``
    samples, when the (estimated) training set is smaller than that. The
    estimate uses :func:`count_slices` (no data loaded) and the held-out rule
    of :func:`~.finetune.holdout_split` (nothing held out below its minimum).
    """
    from .finetune import MIN_SLICES_FOR_COMPARISON

    if minimum <= 0:
        return None
    n_new = sum(count_slices(d)["n_slices"] for d in data_dirs)
    held = 0 if n_new < MIN_SLICES_FOR_COMPARISON else max(1, round(val_fraction * n_new))
    n_new_train = max(1, n_new - held)
    n_train = n_new_train
    if has_replay and 0 < replay_fraction < 1:
        n_train += round(replay_fraction / (1.0 - replay_fraction) * n_train)
    target = max(int(minimum), min(int(maximum), int(passes) * n_new_train))
    return target if n_train < target else None


@dataclass
class DatasetSummary:
    """What a dataset folder holds (see :func:`count_slices`)."""

    path: str
    layout: str = ""  # "nnunet_v2", "slices2d" or "" when not a dataset
    n_cases: int = 0
    n_slices: int = 0  # slices training will use (reviewed ones where listed)
    n_reviewed_cases: int = 0  # cases with an explicit reviewed-slice list
    problem: str = ""

    def text(self) -> str:
        name = Path(self.path).name or self.path
        if self.problem:
            return f"{name}: {self.problem}"
        if self.layout == "slices2d":
            return f"{name}: {self.n_slices} 2D slices"
        reviewed = (
            f", {self.n_reviewed_cases} with reviewed-slice lists" if self.n_reviewed_cases else ""
        )
        return f"{name}: {self.n_cases} case(s), {self.n_slices} slices to train on{reviewed}"


def summarize_dataset(folder: str | os.PathLike) -> DatasetSummary:
    """Cases and slices fine-tuning will use, from JSON and NIfTI headers only."""
    return DatasetSummary(path=str(folder), **count_slices(folder))


def resolve_data_path(ref: Any) -> str | None:
    """A provenance data path as a folder on this machine, or None.

    Plain strings are kept. A reference to a named root,
    ``{"root": "shared", "path": "data/covid-semiseg/train"}`` (what the
    bundled model stores instead of its training machine's absolute path),
    is looked up under ``$NAPARI_COVID_SEG_<ROOT>`` (e.g.
    ``NAPARI_COVID_SEG_SHARED``), then ``<root>/`` beside the current folder
    and beside the source checkout.
    """
    if isinstance(ref, str | os.PathLike):
        return str(ref)
    if not isinstance(ref, dict) or not ref.get("root") or not ref.get("path"):
        return None
    root, rel = str(ref["root"]), str(ref["path"])
    bases = []
    env = os.environ.get(f"NAPARI_COVID_SEG_{root.upper()}")
    if env:
        bases.append(Path(env))
    bases += [Path.cwd().parent / root, Path.cwd() / root]
    bases.append(Path(__file__).resolve().parents[3].parent / root)
    for base in bases:
        if (base / rel).is_dir():
            return str(base / rel)
    return None


def replay_suggestion(
    model_path: str | os.PathLike, _depth: int = 0
) -> tuple[str, int | None] | None:
    """The original training data of a model version (folder, ``rotate_k``) if on disk.

    A trained version: the first folder it was trained on. A fine-tuned
    version: the replay folder its fine-tune used, else its parent's
    suggestion (``provenance.parent_path``), not the corrected exports.
    """
    from ..models.metadata import read_model_json

    try:
        meta = read_model_json(Path(model_path))
    except Exception:
        return None
    prov = meta.get("provenance") or {}
    sources = [
        {**s, "path": resolve_data_path(s["path"])}
        for s in prov.get("data") or []
        if isinstance(s, dict) and s.get("path")
    ]
    sources = [s for s in sources if s["path"]]
    finetune = prov.get("finetune")
    if isinstance(finetune, dict):
        candidates = [str(p) for p in finetune.get("replay_dirs") or []]
    else:
        candidates = [str(s["path"]) for s in sources]
    for path in candidates:
        if Path(path).is_dir():
            k = next((s.get("rotate_k") for s in sources if same_path(path, s["path"])), None)
            return path, None if k is None else int(k)
    parent = prov.get("parent_path")
    if isinstance(finetune, dict) and parent and _depth < 8:
        return replay_suggestion(parent, _depth + 1)
    return None


def format_seconds(seconds: float | None) -> str:
    """``"~45 s"``, ``"~3 min"``, ``"~1 h 05 min"``."""
    if seconds is None:
        return ""
    s = max(0.0, float(seconds))
    if s < 90:
        return f"~{s:.0f} s"
    if s < 3600:
        return f"~{s / 60:.0f} min"
    return f"~{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


@dataclass
class RunState:
    """One worker run: what was asked, what came back."""

    base: str
    events: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cancelled: bool = False
    stderr: str = ""
    stdout_buffer: str = ""
    finished: bool = False
    exit_code: int | None = None
    crashed: bool = False

    def feed(self, chunk: str) -> list[dict[str, Any]]:
        """Complete JSON event lines of a stdout ``chunk`` (recorded; done/error kept)."""
        self.stdout_buffer += chunk
        *lines, self.stdout_buffer = self.stdout_buffer.split("\n")
        events = []
        for line in lines:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)
                if event.get("event") == "done":
                    self.done = event
                elif event.get("event") == "error":
                    self.error = event
                events.append(event)
        return events

    def add_stderr(self, chunk: str, keep: int = 20_000) -> None:
        """Keep the last ``keep`` characters of stderr."""
        self.stderr = (self.stderr + chunk)[-keep:]

    def failure_message(self) -> tuple[str, str]:
        """``(kind, message)`` after an unsuccessful end: kind is "cancelled" or "failed"."""
        if self.error is not None:
            message = str(self.error.get("message") or "Fine-tuning failed")
            if self.error.get("kind") == "CancelledError" and self.cancelled:
                return "cancelled", f"{message}. The previous model is still selected."
            return "failed", message
        if self.cancelled:
            return (
                "cancelled",
                "Fine-tuning was cancelled; nothing was saved. The previous model is still "
                "selected.",
            )
        tail = last_line(self.stderr)
        how = "crashed" if self.crashed else f"exited with code {self.exit_code}"
        return (
            "failed",
            f"The fine-tuning process {how} without a result"
            + (" (killed: possibly out of memory)" if self.crashed else "")
            + (f": {tail}" if tail else "")
            + ". Nothing was registered; the previous model is unchanged.",
        )


@dataclass
class EventView:
    """What one event changes in the view (None: leave as it is)."""

    status: str | None = None
    progress: float | None = None  # 0..1
    progress_text: str | None = None
    epoch: dict[str, Any] | None = None  # an epoch to plot


def event_status(event: dict[str, Any]) -> EventView:
    """The status line, progress and plot point for a worker event."""
    kind = event.get("event")
    if kind == "loading":
        return EventView(status=f"Loading {event.get('base')} and the data…")
    if kind == "start":
        held = event.get("n_val") or 0
        where = (
            f"holding out {held} for the old-vs-new comparison"
            if held
            else "none held out (too few slices for a comparison)"
        )
        return EventView(
            status=f"Training on {event.get('n_train')} slices, {where} ({event.get('device')})…"
        )
    if kind == "batch":
        epochs = max(1, int(event.get("epochs") or 1))
        done = (int(event["epoch"]) - 1 + event["batch"] / max(1, event["batches"])) / epochs
        return EventView(
            progress=min(1.0, done),
            progress_text=f"epoch {event['epoch']}/{epochs} · batch {event['batch']}/"
            f"{event['batches']}",
        )
    if kind == "epoch":
        epochs = max(1, int(event.get("epochs") or 1))
        dice = event.get("val_dice")
        left = format_seconds(event.get("seconds_left"))
        text = f"Epoch {event['epoch']}/{epochs} · loss {event.get('train_loss') or 0:.4f}"
        if dice is not None:
            text += f" · held-out Dice {dice:.3f}"
        if left and event["epoch"] < epochs:
            text += f" · {left} left"
        return EventView(
            status=text,
            progress=event["epoch"] / epochs,
            progress_text=f"epoch {event['epoch']}/{epochs}",
            epoch=event,
        )
    if kind == "comparing":
        return EventView(status="Comparing the old and new model on the held-out slices…")
    return EventView()


@dataclass
class Decision:
    """Whether to select the new version, and the words for it."""

    switch: bool
    compared: bool
    compare_text: str
    how: str


def decide_switch(done: dict[str, Any], only_if_better: bool) -> Decision:
    """Switch only on a comparison on held-out slices that the new version does not lose.

    No comparison (too few slices held out) means no automatic switch, whatever
    ``only_if_better`` says: the user decides with the "Use" button.
    """
    cmp = done.get("comparison") or {}
    compared = cmp.get("old_dice") is not None and cmp.get("new_dice") is not None
    if compared:
        old, new = float(cmp["old_dice"]), float(cmp["new_dice"])
        text = (
            f"Dice on {cmp.get('n_slices')} held-out slice(s) neither version trained or was "
            f"selected on: old {old:.3f} → new {new:.3f} ({new - old:+.3f})"
        )
        switch = new >= old or not only_if_better
    else:
        text = "No held-out slices (too few corrected slices): no comparison, not switched"
        switch = False
    stopped = done.get("stopped")
    how = {
        "cancelled": f"stopped after epoch {done.get('epochs_run')} (cancelled)",
        "early_stopping": f"early stopping after epoch {done.get('epochs_run')}",
    }.get(str(stopped), f"{done.get('epochs_run')} epochs")
    return Decision(switch=switch, compared=compared, compare_text=text, how=how)


def worker_arguments(
    base: str,
    datasets: list[str],
    *,
    epochs: int,
    lr: str,
    device: str,
    replay: str | None = None,
    replay_rotate_k: int | None = None,
    name: str | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """The worker's command line (after ``python -m napari_covid_seg.training.worker``).

    A replay folder that is also one of the datasets is not replayed.
    """
    args = ["--base", base, "--stdin-control"]
    for folder in datasets:
        args += ["--data", folder]
    args += ["--epochs", str(epochs)]
    if lr.strip().lower() != "auto":
        args += ["--lr", lr.strip()]
    args += ["--min-samples-per-epoch", str(MIN_SAMPLES_PER_EPOCH), "--device", device]
    if replay and not any(same_path(replay, d) for d in datasets):
        args += ["--replay", replay]
        if replay_rotate_k is not None:
            args += ["--replay-rotate-k", str(replay_rotate_k)]
    if name:
        args += ["--name", name]
    return args + list(extra or [])


def parse_lr(text: str) -> float | None:
    """A learning rate in (0, 1) from the user's text (``"auto"``: 0, the default), else None."""
    if text.strip().lower() == "auto":
        return 0.0
    try:
        lr = float(text)
    except ValueError:
        return None
    return lr if 0 < lr < 1 else None


# -- small helpers -------------------------------------------------------------------------------


def same_path(a: str, b: str | None) -> bool:
    if not b:
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, ValueError):
        return False


def display_name(spec: str | None) -> str:
    """A model's store name from a name or a version folder path."""
    if spec is None:
        return "?"
    path = Path(str(spec))
    return path.name if len(path.parts) > 1 else str(spec)


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def add_policy_arguments(p: Any) -> None:
    """Fine-tuning policy flags (defaults: training.finetune.POLICY_DEFAULTS)."""
    p.add_argument(
        "--train-bn",
        dest="freeze_bn",
        action="store_const",
        const=False,
        default=None,
        help="update BatchNorm running statistics (default: only from 5 corrected slices "
        "on, when a held-out comparison can catch harm)",
    )
    p.add_argument(
        "--freeze-bn",
        dest="freeze_bn",
        action="store_const",
        const=True,
        help="keep the base's BatchNorm running statistics whatever the number of slices",
    )
    p.add_argument(
        "--train",
        dest="train_part",
        choices=("all", "decoder"),
        default=None,
        help="which weights adapt: all, or decoder (gates and head; encoder frozen)",
    )
    p.add_argument(
        "--l2sp",
        type=float,
        default=None,
        help="pull toward the base weights per step (w -= lr * L2SP * (w - w_base); 0: off)",
    )
