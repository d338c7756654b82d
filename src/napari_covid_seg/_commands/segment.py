"""``napari-covid-seg segment``: lesion masks for NIfTI CT files and DICOM series, headless.

For every input ``<name>.nii[.gz]`` it writes ``OUTDIR/<name>_lesions.nii.gz``
(uint8, 1 = lesion) with the input's exact affine and header, and optionally
``OUTDIR/<name>_lesion_prob.nii.gz`` (uint8, probability x 255). A DICOM
series (a folder, or one ``.dcm`` file of it) is named after its folder; its
mask is written on the series' grid, plus ``OUTDIR/<name>_lesions.dcm``
(DICOM-SEG) with ``--dicom-seg``. One summary
line per case goes to stdout; progress bars, notes and errors go to stderr.
An unreadable input is reported and skipped; the exit code is then 1.

Cohorts (see :mod:`napari_covid_seg.inference.cohort`): ``--shard I/N`` (or a
Slurm array task, or a ``torchrun`` rank) takes every N-th of the sorted
inputs; inputs whose outputs exist are skipped (``--overwrite`` redoes them);
the next volume is read in a background thread while the current one runs;
``OUTDIR/segment_report[.shard-I-of-N].csv`` and ``.json`` get one row per
case, merged by ``napari-covid-seg report OUTDIR``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import CovidSegError

SAMPLE_NAME = "sample_ct"
MASK_SUFFIX = "_lesions"
PROB_SUFFIX = "_lesion_prob"


def register(subparsers: Any) -> None:
    """Add the ``segment`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "segment",
        help="segment lung lesions in NIfTI CT files or DICOM series (or the bundled sample)",
        description="Segment COVID-19 lung lesions in chest CT. Writes "
        "OUTDIR/<name>_lesions.nii.gz with the input's geometry for every INPUT file "
        "(a folder means every NIfTI file in it, or the largest CT series of the DICOM "
        "files in it, named after the folder; a .dcm file means its series).",
    )
    p.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="NIfTI files, DICOM folders or .dcm files"
    )
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR")
    p.add_argument(
        "--model", default="default", help="model name, folder or file (default: the bundled model)"
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", default="auto", type=_batch_size, metavar="N|auto")
    p.add_argument(
        "--threshold", type=_threshold, default=None, help="probability cut (default: the model's)"
    )
    p.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="autocast"
    )
    p.add_argument(
        "--no-lung-restrict",
        dest="lung_restrict",
        action="store_false",
        help="keep predictions outside the lungs",
    )
    p.add_argument(
        "--tta",
        action="store_const",
        const=True,
        default=None,
        help="test-time augmentation: average with the right-left mirror (2x the model time); "
        "default: on only for noisy scans (lung noise above 50 HU, e.g. a sharp kernel)",
    )
    p.add_argument(
        "--no-tta",
        dest="tta",
        action="store_const",
        const=False,
        help="never use test-time flips, not even on noisy scans",
    )
    p.add_argument(
        "--save-probabilities",
        action="store_true",
        help=f"also write <name>{PROB_SUFFIX}.nii.gz (uint8, probability x 255)",
    )
    p.add_argument(
        "--sample",
        action="store_true",
        help=f"segment the bundled sample CT (also written as {SAMPLE_NAME}.nii.gz)",
    )
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="for DICOM inputs also write <name>_lesions.dcm, a DICOM-SEG referencing the "
        "series (needs the dicom-seg extra: pip install 'napari-covid-seg[dicom-seg]')",
    )
    p.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="I/N",
        help="segment only shard I of N (from 0) of the sorted inputs; default: from "
        "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or torchrun's RANK/WORLD_SIZE, else all",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="segment inputs whose outputs already exist in OUTDIR (default: skip them)",
    )
    p.add_argument(
        "--no-prefetch",
        dest="prefetch",
        action="store_false",
        help="do not read the next input in the background while segmenting",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _shard(text: str) -> Any:
    from ..inference.cohort import parse_shard

    try:
        return parse_shard(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"batch size must be >= 1, got {value}")
    return value


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"threshold must be between 0 and 1, got {value}")
    return value


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Inputs to segment and notes about skipped ones.

    A folder expands to its NIfTI files, and is itself an input (its DICOM
    series) when it holds DICOM files. Files are kept as given.
    """
    from ..io import is_nifti_path, name_says_mask, stem
    from ..io.dicom import is_dicom_folder

    files: list[Path] = []
    notes: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_nifti_path(p))
            for p in found:
                if name_says_mask(p) or stem(p).endswith(PROB_SUFFIX):
                    notes.append(f"skipping {p.name}: its name marks a mask, not a CT")
                else:
                    files.append(p)
            if is_dicom_folder(path):
                files.append(path)
            elif not found:
                notes.append(f"{path}: no NIfTI (.nii, .nii.gz) or DICOM files in this folder")
        else:
            files.append(path)
    return files, notes


def run(args: argparse.Namespace) -> int:
    """Segment every input; return 0 if all succeeded, 1 otherwise."""
    err = sys.stderr
    if not args.inputs and not args.sample:
        print("error: give INPUT files or folders, or --sample", file=err)
        return 1
    files, notes = expand_inputs(list(args.inputs))
    for note in notes:
        print(f"note: {note}", file=err)
    if args.inputs and not files and not args.sample:
        print("error: no CT inputs (NIfTI files or DICOM series) to segment", file=err)
        return 1
    if getattr(args, "dicom_seg", False):
        from ..io.dicom_seg import require_highdicom

        try:
            require_highdicom()
        except CovidSegError as e:
            print(f"error: {e}", file=err)
            return 1

    from ..inference import cohort
    from ..inference.device import describe_device
    from ..inference.engine import load_predictor

    try:
        shard = args.shard or cohort.shard_from_env()
    except ValueError as e:
        print(f"error: {e}", file=err)
        return 1
    args.device = cohort.torchrun_device(args.device)  # one GPU per torchrun process
    try:
        predictor = load_predictor(args.model, device=args.device, precision=args.precision)
    except CovidSegError as e:
        print(f"error: {e}", file=err)
        return 1
    if str(args.device).lower() == "auto":
        print(f"note: device auto picked {describe_device(predictor.device)}", file=err)

    out_dir: Path = args.output
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create the output folder {out_dir}: {e}", file=err)
        return 1

    cases: list[tuple[str, Any]] = []
    if args.sample:
        cases.append((SAMPLE_NAME, None))
    cases.extend((str(f), f) for f in files)
    return _run_cases(cases, predictor, args, shard)


def _run_cases(
    cases: list[tuple[str, Path | None]], predictor: Any, args: argparse.Namespace, shard: Any
) -> int:
    """Segment this shard's cases with read-ahead, skipping finished ones; report each case."""
    from ..inference import cohort

    err = sys.stderr
    out_dir: Path = args.output
    probs = bool(args.save_probabilities)
    names = {lab: SAMPLE_NAME if path is None else cohort.case_name(path) for lab, path in cases}
    first_of: dict[str, str] = {}
    for label, _path in cases:
        first_of.setdefault(names[label], label)
    mine = cohort.select_shard(cases, shard, key=lambda c: c[0]) if shard.active else cases
    if shard.active:
        print(
            f"note: shard {shard} ({shard.source}): {len(mine)} of {len(cases)} input(s)", file=err
        )
    model = cohort.model_identity(args.model)
    report = cohort.ReportWriter(
        out_dir, shard, assigned=[names[c[0]] for c in mine], n_inputs=len(cases), model=model
    )
    previous = {} if args.overwrite else cohort.read_report_rows(out_dir)
    failures, todo, skipped = 0, [], 0
    for label, path in mine:
        name = names[label]
        if first_of[name] != label:
            failures += 1
            problem = f"same output name {name!r} as {first_of[name]}; rename one of them"
            print(f"error: {label}: {problem}", file=err)
            # keyed by its path: the row of the case that owns the name stays
            report.add(cohort.case_row(label, label, error=problem, model=model, shard=shard))
        elif not args.overwrite and cohort.outputs_exist(out_dir, name, probabilities=probs):
            skipped += 1
            report.add(cohort.existing_row(name, label, out_dir, previous, shard=shard))
        else:
            todo.append((label, path))
    if skipped:
        print(
            f"note: {skipped} input(s) already segmented in {out_dir}: skipped "
            "(--overwrite to redo them)",
            file=err,
        )
    loads = cohort.Prefetcher(todo, lambda c: _load_case(c[1], out_dir), enabled=args.prefetch)
    for loaded in loads:
        label, _path = loaded.item
        t0 = time.perf_counter()
        timings = {"read": loaded.read_s, "wait": loaded.wait_s}
        problem: BaseException | None = loaded.error
        row: dict[str, Any] | None = None
        if problem is None:
            volume, name = loaded.value
            loaded.value = None
            if (
                name != names[label]
                and not args.overwrite
                and cohort.outputs_exist(out_dir, name, probabilities=probs)
            ):
                row = cohort.existing_row(name, label, out_dir, previous, shard=shard)
            else:
                try:
                    result, mask_path, secs = _segment_one(name, volume, predictor, args)
                except Exception as e:  # one bad case never ends the run
                    problem = e
                else:
                    timings.update(secs, total=loaded.wait_s + time.perf_counter() - t0)
                    row = cohort.case_row(
                        name,
                        label,
                        result=result,
                        timings=timings,
                        model=model,
                        shard=shard,
                        mask_path=mask_path,
                    )
                    del result
            del volume
        if problem is not None:
            failures += 1
            text = (
                str(problem)
                if isinstance(problem, CovidSegError)
                else (f"{type(problem).__name__}: {problem}")
            )
            print(f"error: {label}: {text}", file=err)
            row = cohort.case_row(
                names[label], label, error=problem, timings=timings, model=model, shard=shard
            )
        report.add(row)
    report.write()  # also when this shard had nothing to do: the merge sees it ran
    if failures:
        print(f"{failures} of {len(mine)} input(s) failed", file=err)
    return 1 if failures else 0


def _load_case(path: Path | None, out_dir: Path) -> tuple[Any, str]:
    """Read one input and its output name; None is the bundled sample (written to OUTDIR)."""
    from ..io import read_volume, write_volume

    if path is None:
        from ..io.phantom import make_phantom

        phantom, _truth = make_phantom()
        # Written first and read back, so the mask's header matches the file the user opens.
        target = out_dir / f"{SAMPLE_NAME}.nii.gz"
        return read_volume(write_volume(target, phantom.data, like=phantom)), SAMPLE_NAME
    return _read_input(path)


def _segment_one(
    name: str, volume: Any, predictor: Any, args: argparse.Namespace
) -> tuple[Any, Path, dict[str, float]]:
    """Segment one volume and write its outputs; returns the result, the mask path, timings."""
    from ..inference.engine import segment
    from ..io import write_mask, write_volume

    t0 = time.perf_counter()
    out_dir: Path = args.output
    bar = _progress_bar(name, volume.data.shape, disable=args.quiet)
    try:
        result = segment(
            volume,
            predictor,
            batch_size=args.batch_size,
            threshold=args.threshold,
            restrict_to_lungs=args.lung_restrict,
            tta=getattr(args, "tta", None),
            progress=bar.update_to,
        )
    finally:
        bar.close()
    for message in result.messages:
        print(f"warning: {name}: {message}", file=sys.stderr)
    t_write = time.perf_counter()
    mask_path = write_mask(out_dir / f"{name}{MASK_SUFFIX}.nii.gz", result.mask, like=volume)
    if args.save_probabilities:
        write_volume(
            out_dir / f"{name}{PROB_SUFFIX}.nii.gz", result.probability, like=volume, dtype="uint8"
        )
    if getattr(args, "dicom_seg", False):
        if volume.extra.get("dicom"):
            from ..io.dicom_seg import write_dicom_seg

            write_dicom_seg(out_dir / f"{name}{MASK_SUFFIX}.dcm", result.mask, like=volume)
        else:
            print(f"note: {name} is not a DICOM series: no DICOM-SEG written", file=sys.stderr)
    seconds = time.perf_counter() - t0
    print(
        f"{name}: {result.quantify().summary()}{_lung_note(result)}{_tta_note(result)}; "
        f"{seconds:.1f} s on "
        f"{result.device} -> {mask_path}",
        flush=True,
    )
    return result, mask_path, {"write": time.perf_counter() - t_write}


def _lung_note(result: Any) -> str:
    """``"; lung restriction skipped: <why>"`` for the summary line, or nothing."""
    report = result.lung_report or {}
    if report.get("status") == "skipped":
        return f"; lung restriction skipped: {report.get('reason', '')}"
    return ""


def _tta_note(result: Any) -> str:
    """``"; test-time flips on (noisy scan: ...)"`` when auto mode turned them on, or nothing."""
    tta = getattr(result, "tta", None) or {}
    if tta.get("mode") == "auto" and tta.get("on"):
        return f"; test-time flips on ({tta.get('reason', 'noisy scan')})"
    return ""


def _read_input(path: Path) -> tuple[Any, str]:
    """The CT Volume of an input and its output name (NIfTI stem, or the DICOM folder's name)."""
    from ..io import is_nifti_path, read_volume, stem
    from ..io.dicom import is_dicom_path, read_dicom

    if path.is_dir() or (not is_nifti_path(path) and is_dicom_path(path)):
        volume = read_dicom(path)
        if volume.is_mask:
            raise CovidSegError(f"{path} is a DICOM-SEG (a mask), not a CT series")
        for note in volume.extra.get("notes", []):
            print(f"note: {note}", file=sys.stderr)
        return volume, volume.extra["dicom"]["name"]
    return read_volume(path), stem(path)


class _Bar:
    """tqdm on stderr, advanced with ``update_to(done, total)``."""

    def __init__(self, name: str, total: int, disable: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total, desc=name, unit="slice", file=sys.stderr, disable=disable, leave=False
        )

    def update_to(self, done: int, total: int) -> None:
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def _progress_bar(name: str, shape: tuple[int, ...], disable: bool) -> _Bar:
    return _Bar(name, int(shape[0]), disable)
