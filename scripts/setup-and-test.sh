#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the whole test suite in a virtual display.
set -euo pipefail
cd "$(dirname "$0")/.."
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
