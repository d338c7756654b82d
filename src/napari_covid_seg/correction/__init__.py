"""Human correction of lesion masks: pure numpy/scipy edits, undo/redo, autosave, review.

Conventions for every tool here:

* masks are integer label arrays in napari order ``(z, y, x)``; 0 = background,
  lesion label usually 1;
* ``spacing`` is the voxel size ``(z, y, x)`` in mm (napari layer ``scale``);
* functions return a NEW array of the same dtype; ``*_inplace`` functions and
  :class:`EditHistory` ``undo``/``redo`` change the array they are given;
* tools work on the bounding box of what they can change, so they stay fast on
  300x512x512 volumes with small lesions.

No Qt or napari imports: the Correct widget wraps these.
"""

from __future__ import annotations

from ._common import Box, CorrectionError, bounding_box, ellipsoid_footprint
from .autosave import AutosaveStore, Throttle, default_autosave_root, fingerprint
from .components import (
    Components,
    Lesion,
    delete_component,
    keep_only,
    label_components,
    list_lesions,
)
from .history import EditHistory, counted_changes, diff
from .interpolate import (
    annotated_slices,
    interpolate_all_gaps,
    interpolate_between_slices,
    interpolate_lesion,
    interpolate_slices,
)
from .live import ComponentCounter, LiveBurden
from .morphology import fill_holes, grow, remove_small_islands, shrink, smooth
from .paint import (
    filter_change_to_hu_range,
    paint_ball,
    paint_ball_inplace,
    restrict_edit_to_hu_range,
    restrict_edit_to_hu_range_inplace,
)
from .review import ReviewQueue, slice_uncertainty

__all__ = [
    "AutosaveStore",
    "Box",
    "ComponentCounter",
    "Components",
    "CorrectionError",
    "EditHistory",
    "Lesion",
    "LiveBurden",
    "ReviewQueue",
    "Throttle",
    "annotated_slices",
    "bounding_box",
    "counted_changes",
    "default_autosave_root",
    "delete_component",
    "diff",
    "ellipsoid_footprint",
    "fill_holes",
    "filter_change_to_hu_range",
    "fingerprint",
    "grow",
    "interpolate_all_gaps",
    "interpolate_between_slices",
    "interpolate_lesion",
    "interpolate_slices",
    "keep_only",
    "label_components",
    "list_lesions",
    "paint_ball",
    "paint_ball_inplace",
    "remove_small_islands",
    "restrict_edit_to_hu_range",
    "restrict_edit_to_hu_range_inplace",
    "shrink",
    "slice_uncertainty",
    "smooth",
]
