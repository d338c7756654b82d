"""``napari-covid-seg models list|show|add|remove``: manage model versions.

``list`` and ``show`` read only ``model.json`` files and do not import torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import CovidSegError

_COLUMNS = ("name", "arch", "version", "parent", "val Dice", "created", "path")


def register(subparsers: Any) -> None:
    """Add the ``models`` subcommand to an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "models",
        help="list, show, add and remove model versions",
        description="Manage model versions: the bundled default and your own "
        "(stored under $NAPARI_COVID_SEG_HOME/models or the per-user data folder).",
    )
    sub = parser.add_subparsers(dest="models_command", metavar="{list,show,add,remove}")
    p_list = sub.add_parser("list", help="table of model versions (default)")
    p_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_show = sub.add_parser("show", help="print a model version's model.json")
    p_show.add_argument("name", help="model name, 'default', or a model folder path")
    p_add = sub.add_parser("add", help="copy a model folder or weights file into the store")
    p_add.add_argument("path", help="model folder, model.json, .safetensors or .pt file")
    p_add.add_argument("--name", default=None, help="store name (default: the model's name)")
    p_rm = sub.add_parser("remove", help="delete a user model version")
    p_rm.add_argument("name", help="model name")
    parser.set_defaults(func=run, models_command=None)


def run(args: argparse.Namespace) -> int:
    """Run ``models <command>``; print errors to stderr and return 1 on failure."""
    from ..models.store import ModelStore

    store = ModelStore()
    command = getattr(args, "models_command", None) or "list"
    try:
        if command == "list":
            return _list(store, as_json=bool(getattr(args, "json", False)))
        if command == "show":
            return _show(store, args.name)
        if command == "add":
            info = store.register(args.path, name=args.name)
            print(f"Added {info.name} ({info.architecture}, version {info.version}) at {info.path}")
            return 0
        if command == "remove":
            store.remove(args.name)
            print(f"Removed {args.name}")
            return 0
    except CovidSegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"error: unknown models command {command!r}", file=sys.stderr)
    return 1


def _list(store: Any, as_json: bool) -> int:
    infos = store.list()
    if as_json:
        rows = [
            {
                "name": i.name,
                "architecture": i.architecture,
                "version": i.version,
                "parent": i.parent,
                "val_dice": i.val_dice,
                "created": i.created,
                "path": str(i.path),
                "bundled": i.bundled,
                "error": i.error,
            }
            for i in infos
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not infos:
        print("No models: no bundled default is installed and the store at")
        print(f"{store.root} is empty. Train one with `napari-covid-seg train`.")
        return 0
    rows = [_row(i) for i in infos]
    print(_table(rows))
    return 0


def _row(info: Any) -> tuple[str, ...]:
    dice = info.val_dice
    name = info.name + (" (bundled)" if info.bundled else "")
    if info.error:
        return (name, "?", "?", "-", "-", "-", f"{info.path}  [unreadable: {info.error}]")
    return (
        name,
        info.architecture or "?",
        info.version or "-",
        info.parent or "-",
        "-" if dice is None else f"{dice:.3f}",
        info.created[:19].replace("T", " ") if info.created else "-",
        str(info.path),
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[k]) for r in [_COLUMNS, *rows]) for k in range(len(_COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [_COLUMNS, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _show(store: Any, name: str) -> int:
    from ..models.metadata import read_model_json

    path = store.resolve(name)
    meta = read_model_json(path if path.is_dir() or path.suffix == ".json" else path.parent)
    meta = {"path": str(path), **meta}
    print(json.dumps(meta, indent=2))
    return 0
