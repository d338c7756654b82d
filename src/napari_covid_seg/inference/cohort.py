"""Cohort inference without a GUI: shards, resumable runs, read-ahead, per-case reports.

The ``segment`` command uses these pieces to run over hundreds of scans on a
cluster and to survive interruptions:

* :func:`parse_shard` / :func:`shard_from_env` / :func:`select_shard`: which
  inputs this process handles (``--shard i/n``, a Slurm array task, or a
  ``torchrun`` rank); the assignment is deterministic over the sorted inputs,
  so the shards of one cohort cover every input exactly once.
* :func:`torchrun_device`: one GPU per process under ``torchrun``.
* :func:`outputs_exist`: a case whose outputs exist is skipped (outputs are
  written atomically, so an existing file is a complete one).
* :class:`Prefetcher`: reads the next volume in a background thread while the
  current one is segmented.
* :func:`case_row`, :class:`ReportWriter`, :func:`merge_reports`: one report
  row per case (lesion mL, % of each lung, lung-mask status, model version and
  hash, timings, errors) written as CSV and JSON after every case, one file
  pair per shard, merged by ``napari-covid-seg report OUTDIR``.

Nothing here imports torch.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..errors import CovidSegError

T = TypeVar("T")
R = TypeVar("R")

MASK_SUFFIX = "_lesions"
PROB_SUFFIX = "_lesion_prob"
#: Per-shard report: ``segment_report.json`` or ``segment_report.shard-0-of-4.json``.
REPORT_STEM = "segment_report"
#: The merged report written by :func:`merge_reports`.
MERGED_STEM = "cohort_report"
REPORT_FORMAT = "napari-covid-seg-cohort-report/1"

#: The lesion-burden columns, taken from :class:`.quantify.Quantification`.
BURDEN_COLUMNS: tuple[str, ...] = (
    "lesion_ml",
    "n_lesions",
    "lung_ml",
    "right_lung_ml",
    "left_lung_ml",
    "right_lesion_ml",
    "left_lesion_ml",
    "percent_lungs",
    "percent_right",
    "percent_left",
)
#: Report columns, in CSV order.
COLUMNS: tuple[str, ...] = (
    "case",
    "input",
    "status",
    "error",
    *BURDEN_COLUMNS,
    "lung_mask_status",
    "lung_mask_reason",
    "test_time_flips",
    "slices",
    "shape",
    "spacing_mm",
    "device",
    "precision",
    "batch_size",
    "model",
    "model_version",
    "model_sha256",
    "read_s",
    "wait_s",
    "lungs_s",
    "inference_s",
    "postprocess_s",
    "write_s",
    "total_s",
    "shard",
    "host",
    "finished",
    "mask",
)

#: Row status: segmented now, outputs already present (skipped), or failed.
STATUSES = ("ok", "exists", "error")


# -- which inputs this process handles ------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based), and where that came from."""

    index: int = 0
    count: int = 1
    source: str = "default"

    @property
    def active(self) -> bool:
        return self.count > 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"i/n"`` (0-based, ``0 <= i < n``) -> :class:`Shard`; ValueError with a hint."""
    try:
        left, right = str(text).split("/")
        index, count = int(left), int(right)
    except ValueError:
        raise ValueError(f"expected I/N such as 0/4 (shard I of N, from 0), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need 0 <= I < N (shards are numbered from 0)")
    return Shard(index, count, "--shard")


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard:
    """The shard a cluster job implies, else ``0/1``.

    * Slurm job array: ``SLURM_ARRAY_TASK_ID`` (minus ``SLURM_ARRAY_TASK_MIN``,
      so ``--array=1-8`` works too) of ``SLURM_ARRAY_TASK_COUNT``.
    * ``torchrun``: ``RANK`` of ``WORLD_SIZE``.
    """
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        try:
            task = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            count = int(env["SLURM_ARRAY_TASK_COUNT"])
        except ValueError:
            raise ValueError("SLURM_ARRAY_TASK_ID/COUNT are not integers") from None
        if count >= 1 and 0 <= task < count:
            return Shard(task, count, "SLURM_ARRAY_TASK_ID")
        raise ValueError(
            f"Slurm array task {env['SLURM_ARRAY_TASK_ID']} does not fit a {count}-task array "
            "with contiguous ids (use --array=0-N or pass --shard I/N)"
        )
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        if world >= 1 and 0 <= rank < world:
            return Shard(rank, world, "torchrun RANK/WORLD_SIZE")
    return Shard()


def select_shard(items: Iterable[T], shard: Shard, key: Callable[[T], str] = str) -> list[T]:
    """This shard's items: sorted by ``key``, then every ``count``-th from ``index``.

    Deterministic whatever order the items came in, so ``n`` processes given the
    same inputs split them with no overlap and no gap.
    """
    ordered = sorted(items, key=key)
    return ordered[shard.index :: shard.count]


def torchrun_device(device: str, environ: Mapping[str, str] | None = None) -> str:
    """``cuda:LOCAL_RANK`` for ``auto``/``cuda`` under ``torchrun`` with CUDA, else ``device``."""
    env = os.environ if environ is None else environ
    if "LOCAL_RANK" not in env or str(device).lower() not in ("auto", "cuda", "gpu"):
        return device
    from .device import cuda_available

    if not cuda_available():
        return device
    return f"cuda:{int(env['LOCAL_RANK'])}"


# -- outputs --------------------------------------------------------------------------------


def case_name(path: str | os.PathLike) -> str:
    """The output name of an input before reading it: a NIfTI file's stem, a DICOM
    folder's name, a ``.dcm`` file's folder name."""
    from ..io import is_nifti_path, stem

    p = Path(path)
    if is_nifti_path(p):
        return stem(p)
    if p.suffix.lower() == ".dcm" or (p.is_file() and not p.suffix):
        return p.parent.name
    return p.name


def output_paths(out_dir: str | os.PathLike, name: str, *, probabilities: bool) -> list[Path]:
    """The files ``segment`` writes for case ``name``."""
    out = Path(out_dir)
    paths = [out / f"{name}{MASK_SUFFIX}.nii.gz"]
    if probabilities:
        paths.append(out / f"{name}{PROB_SUFFIX}.nii.gz")
    return paths


def outputs_exist(out_dir: str | os.PathLike, name: str, *, probabilities: bool) -> bool:
    """Whether every output of case ``name`` exists (written atomically: complete)."""
    return all(p.is_file() for p in output_paths(out_dir, name, probabilities=probabilities))


# -- read ahead -----------------------------------------------------------------------------


@dataclass
class Loaded(Generic[T, R]):
    """One item and what loading it gave: ``value`` or ``error``, and the seconds it took.

    ``wait_s`` is how long the consumer waited for it (0 when read-ahead hid it).
    """

    item: T
    value: R | None
    error: BaseException | None
    read_s: float
    wait_s: float


class Prefetcher(Generic[T, R]):
    """Iterate ``(item, load(item))`` with the next item loading in a background thread.

    While the consumer works on item ``k``, item ``k + 1`` is read (file I/O,
    gzip and DICOM decoding release the GIL). At most two loaded items exist at
    once. A failed load is delivered as :attr:`Loaded.error`, never raised, so
    one bad file does not end the run. ``enabled=False`` loads in the caller's
    thread (for comparison and for debugging).
    """

    def __init__(self, items: Sequence[T], load: Callable[[T], R], *, enabled: bool = True) -> None:
        self.items = list(items)
        self.load = load
        self.enabled = enabled

    def _timed(self, item: T) -> tuple[R | None, BaseException | None, float]:
        t0 = time.perf_counter()
        try:
            return self.load(item), None, time.perf_counter() - t0
        except Exception as err:  # delivered to the consumer
            return None, err, time.perf_counter() - t0

    def __iter__(self) -> Iterator[Loaded[T, R]]:
        if not self.enabled:
            for item in self.items:
                value, err, secs = self._timed(item)
                yield Loaded(item, value, err, secs, secs)
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cohort-read")
        try:
            nxt: Future | None = pool.submit(self._timed, self.items[0]) if self.items else None
            for k, item in enumerate(self.items):
                assert nxt is not None
                t0 = time.perf_counter()
                value, err, secs = nxt.result()
                wait = time.perf_counter() - t0
                nxt = (
                    pool.submit(self._timed, self.items[k + 1]) if k + 1 < len(self.items) else None
                )
                yield Loaded(item, value, err, secs, wait)
                value = None  # type: ignore[assignment]  # let the volume go before the next
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


# -- report rows ----------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _round(value: Any, digits: int = 3) -> Any:
    if isinstance(value, bool | int) or not isinstance(value, float):
        return value
    return round(value, digits)


def lung_mask_status(result: Any) -> dict[str, Any]:
    """``status`` ("ok" | "skipped" | "off"), ``reason``, ``right_ml``, ``left_ml`` of a result.

    Reads ``result.lung_report`` where the engine provides it; otherwise "ok"
    when a lung mask exists and "off" when not.
    """
    report = getattr(result, "lung_report", None)
    if isinstance(report, dict):
        return {
            "status": report.get("status", ""),
            "reason": report.get("reason", ""),
            "right_ml": report.get("right_ml"),
            "left_ml": report.get("left_ml"),
        }
    lungs = getattr(result, "lungs", None)
    return {
        "status": "off" if lungs is None else "ok",
        "reason": "",
        "right_ml": None,
        "left_ml": None,
    }


def case_row(
    name: str,
    source: str,
    *,
    result: Any = None,
    error: BaseException | str | None = None,
    status: str | None = None,
    timings: Mapping[str, float] | None = None,
    model: Mapping[str, Any] | None = None,
    shard: Shard | None = None,
    mask_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """One report row (keys :data:`COLUMNS`) for a case.

    Args:
        result: a ``SegmentationResult`` (lesion burden, lung mask, device...).
        error: what went wrong (the row's status is then "error").
        timings: seconds: ``read``, ``wait``, ``write``, ``total`` (the
            result's ``lungs``, ``inference``, ``postprocess`` are added).
        model: ``name``, ``version``, ``sha256`` (see :func:`model_identity`).
    """
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(case=name, input=str(source), host=socket.gethostname(), finished=_now())
    row["shard"] = str(shard or Shard())
    model = model or {}
    row.update(
        model=model.get("name"),
        model_version=model.get("version"),
        model_sha256=model.get("sha256"),
    )
    if error is not None:
        row["status"] = "error"
        if isinstance(error, CovidSegError) or isinstance(error, str):
            row["error"] = str(error)
        else:
            row["error"] = f"{type(error).__name__}: {error}"
    else:
        row["status"] = status or "ok"
    if mask_path is not None:
        row["mask"] = str(mask_path)
    secs = dict(timings or {})
    if result is not None:
        q = result.quantify()
        for k in BURDEN_COLUMNS:
            row[k] = _round(getattr(q, k, None))
        lung = lung_mask_status(result)
        row["lung_mask_status"] = lung["status"]
        row["lung_mask_reason"] = lung["reason"]
        tta = getattr(result, "tta", None) or {}
        row["test_time_flips"] = ("on" if tta.get("on") else "off") if tta else None
        for side in ("right", "left"):
            if row[f"{side}_lung_ml"] is None and lung[f"{side}_ml"] is not None:
                row[f"{side}_lung_ml"] = _round(lung[f"{side}_ml"])
        vol = result.volume
        row["shape"] = "x".join(str(int(s)) for s in vol.data.shape)
        row["slices"] = int(vol.data.shape[result.axial_axis])
        row["spacing_mm"] = "x".join(f"{float(s):.3g}" for s in vol.spacing)
        row.update(device=result.device, precision=result.precision, batch_size=result.batch_size)
        for k in ("lungs", "inference", "postprocess"):
            if k in result.timings:
                secs.setdefault(k, result.timings[k])
    for k, v in secs.items():
        if f"{k}_s" in row:
            row[f"{k}_s"] = _round(v)
    return row


def existing_row(
    name: str,
    source: str,
    out_dir: str | os.PathLike,
    previous: Mapping[str, dict[str, Any]],
    *,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """The row of a case skipped because its outputs exist.

    An earlier report's "ok" row for it is kept (numbers, model, timings);
    without one, the lesion volume is measured from the mask on disk.
    """
    old = previous.get(name)
    if old is not None and old.get("status") == "ok":
        return {**dict.fromkeys(COLUMNS), **old}
    row = case_row(name, source, status="exists", shard=shard)
    mask = output_paths(out_dir, name, probabilities=False)[0]
    row["mask"] = str(mask)
    try:
        import numpy as np

        from ..io import read_volume

        m = read_volume(mask)
        row["lesion_ml"] = _round(np.count_nonzero(m.data) * m.voxel_volume_ml)
        row["shape"] = "x".join(str(int(s)) for s in m.data.shape)
    except Exception as err:  # the row says what is known
        row["error"] = f"existing mask unreadable: {err}"
    return row


def model_identity(spec: Any, store: Any = None) -> dict[str, Any]:
    """``name``, ``version``, ``path`` and ``sha256`` (of the weights file) of a model spec.

    Unknown fields are None (e.g. a model given as a Python object).
    """
    out: dict[str, Any] = {"name": None, "version": None, "path": None, "sha256": None}
    if not isinstance(spec, str | os.PathLike):
        out["name"] = getattr(spec, "name", None) or type(spec).__name__
        return out
    try:
        from ..models.metadata import sha256_file
        from ..models.store import ModelStore

        path = Path((store or ModelStore()).resolve(spec))
    except Exception:
        out["name"] = str(spec)
        return out
    out["path"] = str(path)
    folder = path if path.is_dir() else path.parent
    meta: dict[str, Any] = {}
    try:
        meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    out["name"] = meta.get("name") or folder.name
    out["version"] = meta.get("version")
    weights_name = (meta.get("weights") or {}).get("file", "model.safetensors")
    weights = path if path.is_file() else folder / weights_name
    if weights.is_file():
        out["sha256"] = sha256_file(weights)
    return out


# -- report files ---------------------------------------------------------------------------


def report_stem(shard: Shard) -> str:
    """``segment_report`` or ``segment_report.shard-I-of-N``."""
    return (
        REPORT_STEM if not shard.active else f"{REPORT_STEM}.shard-{shard.index}-of-{shard.count}"
    )


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in COLUMNS})
    return buf.getvalue()


def read_report_rows(out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every case's newest row in the report JSON files of ``out_dir`` (shards and merged)."""
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(out_dir).glob("*.json")):
        if not path.name.startswith((REPORT_STEM, MERGED_STEM)):
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT:
            continue
        for row in doc.get("cases", []):
            if isinstance(row, dict) and row.get("case"):
                _keep_better(rows, row)
    return rows


def _rank(row: Mapping[str, Any]) -> tuple[int, str]:
    return ({"ok": 2, "exists": 1}.get(str(row.get("status")), 0), str(row.get("finished") or ""))


def _keep_better(rows: dict[str, dict[str, Any]], row: dict[str, Any]) -> None:
    """Keep an "ok" row over "exists" over "error"; the newest among equals."""
    old = rows.get(row["case"])
    if old is None or _rank(row) >= _rank(old):
        rows[row["case"]] = row


class ReportWriter:
    """A shard's report: ``OUTDIR/<stem>.csv`` and ``.json``, rewritten atomically per case.

    After an interruption the files hold every case finished so far; the JSON
    also records the cases this shard was given (``assigned``), so the merged
    report can tell which cases never ran.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        shard: Shard,
        *,
        assigned: Sequence[str],
        n_inputs: int,
        model: Mapping[str, Any] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.shard = shard
        self.assigned = list(assigned)
        self.n_inputs = n_inputs
        self.model = dict(model or {})
        self.rows: list[dict[str, Any]] = []
        self.started = _now()

    @property
    def csv_path(self) -> Path:
        return self.out_dir / f"{report_stem(self.shard)}.csv"

    @property
    def json_path(self) -> Path:
        return self.out_dir / f"{report_stem(self.shard)}.json"

    def add(self, row: dict[str, Any]) -> None:
        """Record a case (replacing an earlier row of the same case) and rewrite both files."""
        self.rows = [r for r in self.rows if r["case"] != row["case"]] + [row]
        self.write()

    def write(self) -> None:
        from ..io.atomic import atomic_write_text

        doc = {
            "format": REPORT_FORMAT,
            "shard": {
                "index": self.shard.index,
                "count": self.shard.count,
                "source": self.shard.source,
            },
            "n_inputs": self.n_inputs,
            "assigned": self.assigned,
            "model": self.model,
            "started": self.started,
            "updated": _now(),
            "cases": self.rows,
        }
        atomic_write_text(self.json_path, json.dumps(doc, indent=1, default=str) + "\n")
        atomic_write_text(self.csv_path, _csv_text(self.rows))


@dataclass
class MergedReport:
    """The merged report of an output folder."""

    rows: list[dict[str, Any]]
    shards_seen: list[str]
    shards_missing: list[str]
    not_run: list[str]
    csv_path: Path
    json_path: Path

    @property
    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for r in self.rows:
            out[str(r.get("status"))] = out.get(str(r.get("status")), 0) + 1
        return out

    @property
    def complete(self) -> bool:
        return not self.shards_missing and not self.not_run

    def summary(self) -> str:
        c = self.counts
        text = (
            f"{len(self.rows)} case(s): {c['ok']} segmented, {c['exists']} with earlier outputs, "
            f"{c['error']} failed"
        )
        lesion = [float(r["lesion_ml"]) for r in self.rows if r.get("lesion_ml") not in (None, "")]
        if lesion:
            text += f"; median lesion volume {sorted(lesion)[len(lesion) // 2]:.1f} mL"
        if self.shards_missing:
            text += f"; no report from shard(s) {', '.join(self.shards_missing)}"
        if self.not_run:
            text += f"; {len(self.not_run)} assigned case(s) never finished"
        return text


def merge_reports(out_dir: str | os.PathLike, *, write: bool = True) -> MergedReport:
    """Merge the shard reports of ``out_dir`` into ``cohort_report.csv`` / ``.json``.

    One row per case (an "ok" row wins over "exists" and "error"; the newest
    among equals), sorted by case name. Shards that wrote no report and
    assigned cases without a row are listed.

    Raises:
        CovidSegError: the folder holds no segment report.
    """
    from ..io.atomic import atomic_write_text

    out = Path(out_dir)
    if not out.is_dir():
        raise CovidSegError(f"{out} is not a folder")
    rows: dict[str, dict[str, Any]] = {}
    assigned: set[str] = set()
    seen: set[tuple[int, int]] = set()
    counts: set[int] = set()
    for path in sorted(out.glob(f"{REPORT_STEM}*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CovidSegError(f"cannot read the report {path}: {err}") from None
        if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT:
            continue
        sh = doc.get("shard") or {}
        seen.add((int(sh.get("index", 0)), int(sh.get("count", 1))))
        counts.add(int(sh.get("count", 1)))
        assigned.update(doc.get("assigned", []))
        for row in doc.get("cases", []):
            if isinstance(row, dict) and row.get("case"):
                _keep_better(rows, {**dict.fromkeys(COLUMNS), **row})
    if not seen:
        raise CovidSegError(
            f"no segment report in {out} (expected {REPORT_STEM}*.json written by "
            "'napari-covid-seg segment')"
        )
    missing = [f"{i}/{n}" for n in sorted(counts) for i in range(n) if n > 1 and (i, n) not in seen]
    ordered = [rows[k] for k in sorted(rows)]
    merged = MergedReport(
        rows=ordered,
        shards_seen=[f"{i}/{n}" for i, n in sorted(seen)],
        shards_missing=missing,
        not_run=sorted(assigned - set(rows)),
        csv_path=out / f"{MERGED_STEM}.csv",
        json_path=out / f"{MERGED_STEM}.json",
    )
    if write:
        doc = {
            "format": REPORT_FORMAT,
            "merged": True,
            "updated": _now(),
            "shards_seen": merged.shards_seen,
            "shards_missing": merged.shards_missing,
            "not_run": merged.not_run,
            "counts": merged.counts,
            "cases": ordered,
        }
        atomic_write_text(merged.json_path, json.dumps(doc, indent=1, default=str) + "\n")
        atomic_write_text(merged.csv_path, _csv_text(ordered))
    return merged
