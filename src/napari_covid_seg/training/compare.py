"""Reproduce the paper's comparison (Table 3): four architectures, identical settings.

Each model in ``compare_models`` (default: unet, res_unet, attention_unet,
res_att_unet) is trained with the same config, data, split and seed; the best
epoch's validation metrics form one row. Outputs in ``out_dir``::

    <model>/          the Trainer's run folder (best/, metrics.csv, curves.png, ...)
    comparison.md     markdown table (Acc, Pc, Sen, Sp, F1, per-slice Dice, IoU, ...)
    comparison.csv    the same numbers
    comparison.json   rows + settings

A model whose ``<model>/result.json`` exists is not retrained (re-running
finishes an interrupted comparison).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write_text
from ..models import MODEL_NAMES
from .config import TrainConfig
from .datasets import load_datasets, split_dataset
from .metrics import PAPER_COLUMNS
from .trainer import Trainer

#: Display names as in the paper.
DISPLAY_NAMES: dict[str, str] = {
    "unet": "Unet",
    "res_unet": "Res-Unet",
    "attention_unet": "Attention-Unet",
    "res_att_unet": "ResAttUnet",
}

#: Table columns: (result key, header).
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("val_accuracy", PAPER_COLUMNS["accuracy"]),
    ("val_precision", PAPER_COLUMNS["precision"]),
    ("val_sensitivity", PAPER_COLUMNS["sensitivity"]),
    ("val_specificity", PAPER_COLUMNS["specificity"]),
    ("val_dice", PAPER_COLUMNS["dice"]),
    ("val_dice_mean", "Dice (per-slice mean)"),
    ("val_iou", "IoU"),
)

#: The paper's numbers (10 hand-picked test slices of another dataset), for reference.
PAPER_TABLE: dict[str, dict[str, float]] = {
    "unet": {"Acc": 0.982, "Pc": 0.695, "Sen": 0.769, "Sp": 0.965, "F1": 0.731},
    "res_unet": {"Acc": 0.983, "Pc": 0.766, "Sen": 0.738, "Sp": 0.986, "F1": 0.752},
    "attention_unet": {"Acc": 0.986, "Pc": 0.770, "Sen": 0.897, "Sp": 0.971, "F1": 0.829},
    "res_att_unet": {"Acc": 0.994, "Pc": 0.811, "Sen": 0.929, "Sp": 0.995, "F1": 0.867},
}


def _count_params(path: Path) -> int | None:
    try:
        from safetensors import safe_open

        n = 0
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            for key in f.keys():
                if "running_" in key or "num_batches_tracked" in key:
                    continue
                shape = f.get_slice(key).get_shape()
                size = 1
                for s in shape:
                    size *= int(s)
                n += size
        return n
    except Exception:
        return None


def run_comparison(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    models: Sequence[str] = MODEL_NAMES[::-1],
    progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    handle_signals: bool = False,
) -> list[dict[str, Any]]:
    """Train every model in ``models`` with ``config``; write the tables; return the rows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_datasets(
        config.data,
        input_size=config.input_size,
        rotate_k=config.rotate_k,
        lesion_labels=config.lesion_labels,
        roi=config.roi,
    )
    split = split_dataset(data, config.val_fraction, config.split_seed)
    rows = []
    for name in models:
        run_dir = out / name
        done = run_dir / "result.json"
        if done.is_file():
            result = json.loads(done.read_text(encoding="utf-8"))
        else:
            cfg = config.replace(name=f"compare-{name}", model=name)
            if name in ("unet", "attention_unet"):
                cfg = cfg.replace(
                    model_kwargs={
                        k: v for k, v in cfg.model_kwargs.items() if k != "encoder_weights"
                    }
                )

            def tagged(event: dict[str, Any], _name: str = name) -> None:
                if progress is not None:
                    progress({**event, "model": _name})

            trainer = Trainer(
                cfg,
                out_dir=run_dir,
                data=data,
                split=split,
                register=False,
                progress=tagged,
                should_stop=should_stop,
                handle_signals=handle_signals,
                resume=True,
            )
            res = trainer.fit()
            result = json.loads(Path(res.result_json).read_text(encoding="utf-8"))
            if res.stopped == "cancelled":
                rows.append(_row(name, result, run_dir))
                break
        rows.append(_row(name, result, run_dir))
    write_tables(rows, out, config)
    return rows


def _row(name: str, result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    row = {"model": name, "method": DISPLAY_NAMES.get(name, name)}
    row.update(result.get("best_metrics", {}))
    row["best_epoch"] = result.get("best_epoch")
    row["epochs_run"] = result.get("epochs_run")
    row["stopped"] = result.get("stopped")
    row["seconds"] = result.get("seconds")
    row["params"] = _count_params(run_dir / "best")
    return row


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a markdown table (paper column names)."""
    head = ["Method", *[h for _, h in TABLE_COLUMNS], "Best epoch", "Params (M)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = [r["method"]]
        for key, _ in TABLE_COLUMNS:
            v = r.get(key)
            cells.append("n/a" if v is None else f"{float(v):.3f}")
        cells.append(str(r.get("best_epoch")))
        p = r.get("params")
        cells.append("n/a" if p is None else f"{p / 1e6:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, Any]], out: Path, config: TrainConfig) -> None:
    """Write comparison.md, comparison.csv and comparison.json into ``out``."""
    from ..models.metadata import dumps

    atomic_write_text(out / "comparison.md", markdown_table(rows))
    keys = [
        "model",
        "method",
        *[k for k, _ in TABLE_COLUMNS],
        "val_iou_mean",
        "val_loss",
        "best_epoch",
        "epochs_run",
        "stopped",
        "seconds",
        "params",
    ]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in keys})
    atomic_write_text(out / "comparison.csv", buf.getvalue())
    atomic_write_text(out / "comparison.json", dumps({"rows": rows, "config": config.to_dict()}))
