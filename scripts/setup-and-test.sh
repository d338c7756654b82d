#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the whole test suite in a virtual display.
# On a fresh Debian/Ubuntu machine the display packages are installed first where
# that is possible (root, or sudo without a password); otherwise it stops and
# prints the one command to run (scripts/install-display.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-display.sh
bash scripts/setup.sh
. .venv/bin/activate
ruff check src tests benchmarks training
set +e
xvfb-run -a -s "-screen 0 1600x1000x24" python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
