"""Within-volume learning, measured where labels exist: the phantom under an acquisition shift.

For each phantom seed: the synthetic chest CT (:func:`io.phantom.make_phantom`,
48 x 256 x 256, 2.5 x 1.4 x 1.4 mm) is passed through a scanner-like variant
(``--variant``: ``sharp_kernel_noise`` = a sharper kernel plus noise, or
``none``); the model segments it (defaults, as the Segment widget); the user
"corrects" the k most uncertain slices of the review queue to the truth; then
:func:`training.learn_in_volume.learn_in_volume` fine-tunes on those k slices
(plus a replay sample of the model's training data where it is on disk) and
re-segments the rest. Reported: Dice on the untouched slices (every slice
but the k) before and after, and the seconds spent learning and re-segmenting.

What it shows and what not: the phantom is synthetic (smooth lungs, blob-like
lesions); a real CT's lesions are more varied. It measures whether learning
from k corrected slices of one volume helps the other slices of that same
volume, and how long it takes on this machine; not accuracy on real patients.

Prints JSON; ``--json`` also writes it. Run (repository root)::

    python benchmarks/bench_learn_in_volume.py --seeds 0,1,2 --k 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


def shifted(volume: Any, variant: str, seed: int) -> Any:
    """The phantom through an acquisition variant (HU, int16)."""
    from napari_covid_seg.training.acquisition import sharp_noisy, thick_blur

    if variant == "none":
        return volume
    rng = np.random.default_rng(seed)
    fn = {"sharp_kernel_noise": sharp_noisy, "thick_slice_blur": thick_blur}[variant]
    return volume.with_data(fn(np.asarray(volume.data), rng))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a != 0, b != 0
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def one(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from napari_covid_seg.inference import segment
    from napari_covid_seg.io.phantom import make_phantom
    from napari_covid_seg.training.learn_in_volume import learn_in_volume

    image, truth = make_phantom(seed=seed)
    image = shifted(image, args.variant, seed)
    t0 = time.perf_counter()
    base = segment(image, args.model, device=args.device)
    t_seg = time.perf_counter() - t0
    axis = base.axial_axis
    n = base.mask.shape[axis]
    if args.pick == "uncertain":  # the review queue's first k slices
        picks = sorted(int(z) for z in base.slices_to_review(args.k))
    else:  # k slices spread evenly over the volume, as a user scrolling through
        picks = [round(float(z)) for z in np.linspace(0, n - 1, args.k + 2)[1:-1]]
    labels = np.moveaxis(base.mask.copy(), axis, 0)
    truth_z = np.moveaxis(truth.data, axis, 0)
    labels[picks] = truth_z[picks]  # the user corrected these slices to the truth
    labels = np.moveaxis(labels, 0, axis)
    rest = [z for z in range(truth_z.shape[0]) if z not in set(picks)]
    before = dice(np.moveaxis(base.mask, axis, 0)[rest], truth_z[rest])
    result = learn_in_volume(
        image,
        labels,
        picks,
        args.model,
        device=args.device,
        epochs=args.epochs,
        seed=seed,
        replay_dirs=() if args.no_replay else "auto",
    )
    after = dice(np.moveaxis(result.labels, axis, 0)[rest], truth_z[rest])
    kept = all(np.array_equal(np.moveaxis(result.labels, axis, 0)[z], truth_z[z]) for z in picks)
    return {
        "seed": seed,
        "corrected_slices": picks,
        "dice_untouched_before": round(before, 4),
        "dice_untouched_after": round(after, 4),
        "delta": round(after - before, 4),
        "corrected_kept": kept,
        "seconds_first_segmentation": round(t_seg, 1),
        "seconds_learn": result.timings.get("train"),
        "seconds_resegment": result.timings.get("segment"),
        "seconds_total": result.timings.get("total"),
        "n_train": result.n_train,
        "n_replay": result.n_replay,
        "epochs": result.epochs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--variant", default="sharp_kernel_noise")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--k", type=int, default=5)
    p.add_argument(
        "--pick",
        choices=("spread", "uncertain"),
        default="spread",
        help="which slices the user corrects: evenly spread, or the review queue's first k",
    )
    p.add_argument("--no-replay", action="store_true", help="learn from the k slices only")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [one(int(s), args) for s in args.seeds.split(",")]
    deltas = [r["delta"] for r in runs]
    report = {
        "benchmark": "learn_in_volume",
        "command": "python benchmarks/bench_learn_in_volume.py " + " ".join(argv or sys.argv[1:]),
        "model": args.model,
        "variant": args.variant,
        "k": args.k,
        "pick": args.pick,
        "replay": not args.no_replay,
        "runs": runs,
        "mean_delta": round(float(np.mean(deltas)), 4),
        "mean_seconds_total": round(float(np.mean([r["seconds_total"] for r in runs])), 1),
        "machine": {
            "device": args.device,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            **(
                {"gpu": torch.cuda.get_device_name(0)}
                if args.device != "cpu" and torch.cuda.is_available()
                else {}
            ),
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        from napari_covid_seg.io.atomic import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
