#!/usr/bin/env bash
# Create .venv with torch, napari (PyQt6) and this package (editable, with test extras).
# Usage: scripts/setup.sh            (idempotent; reuses an existing .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "$PY not found: install Python 3.10 or newer (e.g. sudo apt-get install -y python3 python3-venv)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    # Debian/Ubuntu ship venv separately: install it where we may, else say how.
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq
      sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
      echo "Cannot create a virtual environment. Install venv with:" >&2
      echo "  sudo sh -c 'apt-get update && apt-get install -y python3-venv'" >&2
      echo "then run the same command again." >&2
      exit 1
    fi
    "$PY" -m venv .venv
  fi
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first: on the project machines this resolves to the wheels on local disk.
python -m pip install -q "torch>=2.1,<3" "torchvision>=0.16,<1"
python -m pip install -q -e ".[testing]"
