"""Re-measure a shipped model's validation figures after a change of pre- or post-processing.

    python training/recipes/remeasure_default.py [src/napari_covid_seg/bundled_models/default]

Runs the same three user-path evaluations as ``ship_default.py`` (defaults,
``--no-lung-restrict``, ``--tta``; one-slice HU NIfTI with the true anatomy ->
reader -> ``segment``) and rewrites only the ``metrics`` of ``model.json``
(atomically). The weights file is not touched, so no new copy of ~50 MB
enters git history when only the processing around the model changed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ship_default import measure, val_metrics


def main(dest: Path) -> dict:
    import torch

    torch.set_num_threads(2)
    meta_path = dest / "model.json"
    meta = json.loads(meta_path.read_text())
    runs = measure(dest)
    meta["metrics"] = {
        **meta.get("metrics", {}),
        **val_metrics(runs),
        "remeasured": time.strftime("%Y-%m-%d"),
    }
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".model.json.")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, meta_path)
    return runs


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[2] / "src/napari_covid_seg/bundled_models/default"
    print(json.dumps(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default), indent=1))
