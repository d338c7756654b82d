"""Whole-volume inference speed and memory: the engine vs. a plain PyTorch loop.

Prints one JSON object: ``{"machine": {...}, "records": [...]}`` with one record
per (device, size, precision) setting::

    device, size, slices, precision, batch_size,
    volume_seconds         engine, whole volume: lung mask + model + post-processing
    slices_per_s           slices / volume_seconds
    model_slices_per_s     slices / the engine's model loop alone
    baseline_slices_per_s  plain loop: fp32, NCHW, batch 1, no autocast, no fusion
    speedup                slices_per_s / baseline_slices_per_s
    peak_memory_mb         peak host RSS of the process running this setting
    peak_device_memory_mb  peak CUDA memory (CUDA only)
    load_average           1-minute load before/after (a shared machine skews timings)

The model is the full ``res_att_unet`` (random weights: speed does not depend
on them) and the volume a phantom of ``--slices`` slices of ``size x size``,
with ``input_size = size``. Each setting runs in a fresh subprocess so its
peak memory is its own. ``--agreement MODEL`` instead compares the bf16 and
fp32 masks of a trained model version on the phantom (Dice).

    python benchmarks/bench_inference.py                     # CPU (+ CUDA if present)
    python benchmarks/bench_inference.py --device cuda --sizes 512 --slices 300
    python benchmarks/bench_inference.py --agreement path/to/model_folder
    python benchmarks/bench_inference.py --device cuda --sizes 512 --slices 300 \
        --precision bf16 --from-disk             # + read .nii.gz -> mask -> write, timed

With ``--from-disk`` each record also has ``disk`` timings: the phantom as a
gzipped NIfTI read (``read_s``), segmented (``segment_s``) and its mask
written (``write_s``), as the ``segment`` command does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def _plain_loop(model, volume, n: int, device) -> float:
    """Slices/s of the obvious loop: one fp32 NCHW slice at a time, no autocast."""
    import numpy as np
    import torch

    from napari_covid_seg.inference.preprocess import normalize

    def one(i: int) -> np.ndarray:
        x = torch.from_numpy(normalize(volume.data[i]))[None, None].repeat(1, 3, 1, 1)
        with torch.no_grad():
            p = torch.sigmoid(model(x.to(device)))
        return (p[0, 0] > 0.5).cpu().numpy()

    one(0)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(n):
        one(i % volume.data.shape[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


#: A folder where phantoms are kept between runs (``benchmarks/gpu_check.sh`` sets it):
#: a 300 x 512 x 512 phantom takes 15-70 s to make.
CACHE_ENV = "NAPARI_COVID_SEG_BENCH_CACHE"


def cached_phantom(slices: int, size: int, seed: int = 0):
    """The benchmark phantom (``slices`` x ``size`` x ``size``), from ``$CACHE_ENV`` if there."""
    from pathlib import Path

    import numpy as np

    from napari_covid_seg.io import Volume
    from napari_covid_seg.io.phantom import make_phantom

    spacing = (2.5, 0.7 * 512 / size, 0.7 * 512 / size)
    cache = os.environ.get(CACHE_ENV)
    path = Path(cache) / f"phantom_{slices}x{size}x{size}_s{seed}.npz" if cache else None
    if path is not None and path.is_file():
        saved = np.load(path)
        return Volume(data=saved["data"], affine=saved["affine"])
    volume, _ = make_phantom(shape=(slices, size, size), spacing=spacing, seed=seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, data=volume.data, affine=volume.affine)
        os.replace(tmp, path)
    return volume


def run_one(
    device_name: str,
    size: int,
    slices: int,
    baseline_slices: int,
    precision: str,
    batch_size: str,
    compile_model: bool,
    repeats: int = 2,
    from_disk: bool = False,
) -> dict:
    """One setting, in this process: engine and plain loop alternate, best of ``repeats``."""
    import numpy as np
    import torch

    from napari_covid_seg.inference.engine import Predictor, segment
    from napari_covid_seg.models import build_model

    torch.manual_seed(0)
    device = torch.device(device_name)
    volume = cached_phantom(slices, size)
    model = build_model("res_att_unet", encoder_weights="none").eval()
    predictor = Predictor(
        model, {"input_size": size}, device=device, precision=precision, compile=compile_model
    )
    bs: int | str = batch_size if batch_size == "auto" else int(batch_size)
    # warm-up: oneDNN primitive caches, cuDNN autotuning, compilation
    from napari_covid_seg.io import Volume

    warm = Volume(data=volume.data[: min(slices, 16)], affine=volume.affine)
    segment(warm, predictor, batch_size=bs, lungs=False, restrict_to_lungs=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_model = model.to(device)
    load_before = os.getloadavg()[0]
    seconds, baseline, result = float("inf"), 0.0, None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        res = segment(volume, predictor, batch_size=bs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if time.perf_counter() - t0 < seconds:
            seconds, result = time.perf_counter() - t0, res
        rate = _plain_loop(base_model, volume, min(baseline_slices, slices), device)
        baseline = max(baseline, rate)
    assert result is not None
    record = {
        "device": device_name,
        "device_name": result.device,
        "size": size,
        "slices": slices,
        "precision": result.precision,
        "batch_size": result.batch_size,
        "compiled": compile_model,
        "volume_seconds": round(seconds, 3),
        "slices_per_s": round(slices / seconds, 2),
        "model_slices_per_s": round(slices / result.timings["inference"], 2),
        "lungs_seconds": round(result.timings["lungs"], 3),
        "baseline_slices_per_s": round(baseline, 2),
        "speedup": round(slices / seconds / baseline, 2),
        "peak_memory_mb": round(_peak_rss_mb(), 1),
        "volume_mb": round(volume.data.nbytes / 2**20, 1),
        "lesion_voxels": int(np.count_nonzero(result.mask)),
        "repeats": repeats,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if device.type == "cuda":
        record["peak_device_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if from_disk:
        record["disk"] = _disk_to_mask(volume, predictor, bs, device)
    return record


def _disk_to_mask(volume, predictor, batch_size, device) -> dict:
    """Seconds to read the volume from a .nii.gz, segment it and write the mask."""
    import tempfile
    from pathlib import Path

    import torch

    from napari_covid_seg.inference.engine import segment
    from napari_covid_seg.io import read_volume, write_mask, write_volume

    with tempfile.TemporaryDirectory(prefix="bench_inference.") as tmp:
        src = write_volume(Path(tmp) / "ct.nii.gz", volume.data, like=volume)
        t0 = time.perf_counter()
        vol = read_volume(src)
        t1 = time.perf_counter()
        res = segment(vol, predictor, batch_size=batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        write_mask(Path(tmp) / "ct_lesions.nii.gz", res.mask, like=vol)
        t3 = time.perf_counter()
        file_mb = src.stat().st_size / 2**20
    return {
        "read_s": round(t1 - t0, 3),
        "segment_s": round(t2 - t1, 3),
        "model_s": round(res.timings["inference"], 3),
        "write_s": round(t3 - t2, 3),
        "total_s": round(t3 - t0, 3),
        "file_mb": round(file_mb, 1),
    }


def agreement(model_path: str, device_name: str) -> dict:
    """Dice between the bf16 and fp32 masks of a trained model on the phantom."""
    import numpy as np

    from napari_covid_seg.inference.engine import segment
    from napari_covid_seg.io.phantom import make_phantom

    volume, truth = make_phantom()
    out = {"model": model_path, "device": device_name}
    masks = {}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        r = segment(volume, model_path, device=device_name, precision=precision)
        masks[precision] = r.mask > 0
        gt = truth.data > 0
        out[f"{precision}_seconds"] = round(time.perf_counter() - t0, 2)
        out[f"{precision}_dice_vs_truth"] = round(
            float(2 * (masks[precision] & gt).sum() / max(1, masks[precision].sum() + gt.sum())), 4
        )
    a, b = masks["fp32"], masks["bf16"]
    out["bf16_vs_fp32_dice"] = round(float(2 * (a & b).sum() / max(1, a.sum() + b.sum())), 5)
    out["voxels_differing"] = int(np.count_nonzero(a != b))
    out["mask_voxels"] = int(a.sum())
    return out


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from napari_covid_seg.inference.device import cpu_supports_bf16

    info["cpu_bf16"] = cpu_supports_bf16()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="all", help="cpu, cuda, or all (cpu + cuda if present)")
    ap.add_argument("--sizes", default="256,512", help="comma-separated input sizes")
    ap.add_argument("--slices", type=int, default=24, help="slices in the phantom volume")
    ap.add_argument("--repeats", type=int, default=2, help="best of N (engine and loop alternate)")
    ap.add_argument(
        "--baseline-slices",
        type=int,
        default=4,
        help="slices timed for the plain loop (it is slow on CPU)",
    )
    ap.add_argument("--precision", default="auto", help="comma-separated: auto,fp32,bf16,fp16")
    ap.add_argument("--batch-size", default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile the engine's model")
    ap.add_argument("--agreement", metavar="MODEL", help="bf16 vs fp32 mask Dice of a model")
    ap.add_argument("--from-disk", action="store_true", help="also time .nii.gz -> mask -> .nii.gz")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.agreement:
        dev = "cpu" if args.device == "all" else args.device
        print(json.dumps(agreement(args.agreement, dev), indent=2))
        return 0
    if args.one:
        rec = run_one(
            args.device,
            int(args.sizes),
            args.slices,
            args.baseline_slices,
            args.precision,
            args.batch_size,
            args.compile,
            args.repeats,
            args.from_disk,
        )
        print(json.dumps(rec))
        return 0

    import torch

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
    records = []
    for dev in devices:
        for size in (int(s) for s in args.sizes.split(",")):
            for precision in args.precision.split(","):
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    "--device",
                    dev,
                    "--sizes",
                    str(size),
                    "--slices",
                    str(args.slices),
                    "--baseline-slices",
                    str(args.baseline_slices),
                    "--precision",
                    precision,
                    "--batch-size",
                    args.batch_size,
                    "--repeats",
                    str(args.repeats),
                ]
                if args.compile:
                    cmd.append("--compile")
                if args.from_disk:
                    cmd.append("--from-disk")
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    records.append(
                        {
                            "device": dev,
                            "size": size,
                            "precision": precision,
                            "error": proc.stderr.strip().splitlines()[-1:],
                        }
                    )
                    continue
                rec = json.loads(proc.stdout.strip().splitlines()[-1])
                records.append(rec)
                print(json.dumps(rec), file=sys.stderr, flush=True)
    print(json.dumps({"machine": machine(), "records": records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
