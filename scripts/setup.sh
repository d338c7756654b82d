#!/usr/bin/env bash
# Create .venv with torch, napari (PyQt6) and this package (editable, with test extras).
# Usage: scripts/setup.sh            (idempotent; reuses an existing .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first: on the project machines this resolves to the wheels on local disk.
python -m pip install -q "torch>=2.1,<3" "torchvision>=0.16,<1"
python -m pip install -q -e ".[testing]"
