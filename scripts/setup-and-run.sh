#!/usr/bin/env bash
# Set up, then the main job: napari with the sample CT and the widgets, segmented with
# the bundled model. Without a display, the `segment` command does the same job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec python -m napari_covid_seg.demo
else
  echo "no display: running the headless job (napari-covid-seg segment --sample)" >&2
  exec napari-covid-seg segment --sample -o covid-seg-output
fi
