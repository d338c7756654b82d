"""Cohort throughput of ``napari-covid-seg segment``: volumes/s with and without read-ahead.

Writes ``--cases`` synthetic CTs (phantoms of ``--slices`` x ``--size`` x
``--size``, int16 HU, gzipped NIfTI) to a temporary folder, then runs the
``segment`` command's cohort loop over them (read, lung mask, model,
post-processing, write, per-case report) with the model loaded once, as the
command does. Settings alternate (``--repeats`` rounds, best of each) so a
shared machine's load affects both alike. Prints one JSON object::

    machine       cpu, threads, torch, gpu, load average
    settings      cases, slices, size, model, device, precision
    records       [{prefetch, seconds, volumes_per_s, slices_per_s, read_s, wait_s}]
    prefetch_speedup   volumes/s with read-ahead / without

    python benchmarks/bench_cohort.py                          # CPU, bundled model
    python benchmarks/bench_cohort.py --device cuda --size 512 --slices 300 --cases 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def make_cohort(folder: Path, cases: int, slices: int, size: int, distinct: bool) -> list[Path]:
    """``cases`` gzipped NIfTI phantoms; copies of one unless ``distinct`` (same timings,
    and a 300 x 512 x 512 phantom takes 15-70 s to make and 5-15 s to gzip)."""
    from bench_inference import cached_phantom

    from napari_covid_seg.io import write_volume

    paths = []
    for k in range(cases):
        target = folder / f"case{k:03d}.nii.gz"
        if k and not distinct:
            shutil.copyfile(paths[0], target)
            paths.append(target)
            continue
        img = cached_phantom(slices, size, seed=k if distinct else 0)
        paths.append(write_volume(target, img.data, like=img))
    return paths


def run_setting(files: list[Path], out: Path, predictor, args, prefetch: bool) -> dict:
    from napari_covid_seg._commands import segment as segment_cmd
    from napari_covid_seg.cli import build_parser
    from napari_covid_seg.inference.cohort import Shard

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ns = build_parser().parse_args(
        ["segment", "-o", str(out), "--model", args.model, "-q", "--overwrite"]
    )
    ns.prefetch = prefetch
    cases = [(str(f), f) for f in files]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # per-case summary lines: not the JSON
        code = segment_cmd._run_cases(cases, predictor, ns, Shard())
    seconds = time.perf_counter() - t0
    rows = json.loads((out / "segment_report.json").read_text())["cases"]
    assert code == 0 and len(rows) == len(files), (code, rows)
    return {
        "prefetch": prefetch,
        "seconds": round(seconds, 3),
        "volumes_per_s": round(len(files) / seconds, 4),
        "slices_per_s": round(len(files) * args.slices / seconds, 2),
        "read_s_mean": round(sum(r["read_s"] for r in rows) / len(rows), 3),
        "wait_s_mean": round(sum(r["wait_s"] for r in rows) / len(rows), 3),
        "inference_s_mean": round(sum(r["inference_s"] for r in rows) / len(rows), 3),
        "lungs_s_mean": round(sum(r["lungs_s"] or 0 for r in rows) / len(rows), 3),
    }


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(
                ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--model", default="default", help="model name or folder (default: bundled)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--distinct", action="store_true", help="a different phantom per case")
    args = ap.parse_args(argv)

    import torch

    from napari_covid_seg.inference.engine import load_predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_cohort."))
    try:
        t0 = time.perf_counter()
        files = make_cohort(tmp / "in", args.cases, args.slices, args.size, args.distinct)
        write_s = time.perf_counter() - t0
        predictor = load_predictor(args.model, device=args.device, precision=args.precision)
        # warm-up: one case (oneDNN/cuDNN caches, compilation)
        run_setting(files[:1], tmp / "warm", predictor, args, prefetch=False)
        load_before = os.getloadavg()[0]
        best: dict[bool, dict] = {}
        for _ in range(max(1, args.repeats)):
            for prefetch in (False, True):
                rec = run_setting(files, tmp / "out", predictor, args, prefetch)
                print(json.dumps(rec), file=sys.stderr, flush=True)
                if prefetch not in best or rec["seconds"] < best[prefetch]["seconds"]:
                    best[prefetch] = rec
        out = {
            "benchmark": "cohort",
            "machine": {
                **machine(),
                "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            },
            "settings": {
                "cases": args.cases,
                "slices": args.slices,
                "size": args.size,
                "model": args.model,
                "device": str(predictor.device),
                "precision": predictor.precision,
                "repeats": args.repeats,
                "input_mb_per_case": round(files[0].stat().st_size / 2**20, 2),
                "distinct_cases": args.distinct,
                "cohort_write_s": round(write_s, 2),
            },
            "records": [best[False], best[True]],
            "prefetch_speedup": round(
                best[True]["volumes_per_s"] / best[False]["volumes_per_s"], 3
            ),
        }
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
