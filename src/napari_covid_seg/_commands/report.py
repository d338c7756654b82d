"""``napari-covid-seg report OUTDIR``: merge the per-shard reports of a cohort run.

``segment`` writes ``OUTDIR/segment_report[.shard-I-of-N].csv`` and ``.json``
(one row per case). This command merges them into ``OUTDIR/cohort_report.csv``
and ``.json`` (one row per case, sorted by name), prints a summary, and says
which shards never reported and which assigned cases never finished. Exit code
0 when every case is accounted for and none failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import CovidSegError


def register(subparsers: Any) -> None:
    """Add the ``report`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "report",
        help="merge the per-shard segment reports of an output folder",
        description="Merge OUTDIR/segment_report*.json (written by 'segment', one per shard) "
        "into OUTDIR/cohort_report.csv and .json: lesion mL, % of each lung, lung-mask "
        "status, model version and hash, timings and errors per case.",
    )
    p.add_argument("output", type=Path, metavar="OUTDIR", help="the folder 'segment -o' wrote")
    p.add_argument("--json", action="store_true", help="print the merged report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Merge, write, summarise; 0 if every case is done without error, else 1."""
    from ..inference.cohort import merge_reports

    try:
        merged = merge_reports(args.output)
    except CovidSegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(merged.json_path.read_text(encoding="utf-8"), end="")
    else:
        print(merged.summary())
        print(f"-> {merged.csv_path}")
    for row in merged.rows:
        if row.get("status") == "error":
            print(f"failed: {row['case']}: {row.get('error')}", file=sys.stderr)
    for name in merged.not_run:
        print(f"not finished: {name}", file=sys.stderr)
    for shard in merged.shards_missing:
        print(f"no report from shard {shard}", file=sys.stderr)
    return 0 if merged.complete and not merged.counts["error"] else 1
