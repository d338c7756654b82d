"""The ``napari-covid-seg`` command: segment / report / train / finetune / evaluate / compare /
models.

Each subcommand lives in ``napari_covid_seg._commands.<area>`` and registers
itself with :func:`register`; heavy imports (torch) happen only when a
subcommand runs, so ``--help`` and ``--version`` are instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import CovidSegError

COMMAND_MODULES = ("segment", "report", "train", "models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-covid-seg",
        description=(
            "COVID-19 lung lesion segmentation in chest CT (ResAttUnet). "
            "Without a display, `segment --sample` runs the whole job on the bundled sample."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"napari_covid_seg._commands.{name}")
        except ImportError as e:  # pragma: no cover - only in broken installs
            print(f"napari-covid-seg: command group '{name}' unavailable: {e}", file=sys.stderr)
            continue
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except CovidSegError as e:
        print(f"napari-covid-seg: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("napari-covid-seg: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
