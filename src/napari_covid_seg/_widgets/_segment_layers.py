"""Turn a finished segmentation into napari layers (GUI thread, cheap work only).

Layers made for image ``CT``:

* ``"CT lesions"``: Labels, uint8 {0, 1}, the image's geometry and a copy of
  its ``metadata["nifti"]``; ``metadata["covid_seg"]`` holds the model
  version, per-slice uncertainty, the review queue, the quantification, the
  original ``prediction`` (for provenance: voxels the human added/removed) and
  the ``lungs`` labels with their ``lung_mask`` report (the Correct widget shows,
  corrects and quantifies with them).
* ``"CT lesion probability"``: Image, uint8 ``p * 255``.
* ``"CT uncertainty"``: Image, uint8 binary entropy (bits) ``* 255``.
* ``"CT attention 1"``, ``"CT attention 2"``: Image, uint8 attention
  coefficients ``alpha * 255`` of the finest gates, upsampled to the image.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from ._layers import KEY, LESIONS, geometry_kwargs, is_labels, plugin_meta
from ._notify import Confirm
from ._segment_job import SegmentOutcome


def lesions_name(image: Any) -> str:
    return f"{image.name} lesions"


def is_edited(labels: Any) -> bool:
    """Whether a Labels layer differs from the prediction stored in its metadata."""
    prediction = plugin_meta(labels).get("prediction")
    data = np.asarray(labels.data)
    if prediction is None or np.shape(prediction) != data.shape:
        return bool(data.any())
    return not np.array_equal(prediction, data)


def lesion_metadata(image: Any, outcome: SegmentOutcome) -> dict:
    """The Labels layer's metadata: geometry copy plus the plugin's provenance record."""
    result = outcome.result
    meta = geometry_kwargs(image)["metadata"]
    scores = result.uncertainty if result.uncertainty is not None else []
    meta[KEY] = {
        "role": LESIONS,
        "image_layer": image.name,
        "model_version": result.model_name,
        "model_path": outcome.model_path,
        "threshold": float(result.threshold),
        "device": result.device,
        "axial_axis": int(result.axial_axis),
        "slice_uncertainty": [float(v) for v in np.ravel(scores)],
        "review": outcome.review,
        "quantification": outcome.quantification.to_dict() if outcome.quantification else None,
        "lung_mask": result.lung_report,
        "test_time_flips": result.tta,
        "lungs": result.lungs,
        "prediction": result.mask.copy(),
    }
    return meta


def _put_image(viewer: Any, image: Any, name: str, data: np.ndarray, role: str, **kw: Any) -> Any:
    """Add an Image layer with ``image``'s geometry, or replace the data of an existing one."""
    geometry = geometry_kwargs(image)
    geometry["metadata"][KEY] = {"role": role, "image_layer": image.name}
    if name in viewer.layers and viewer.layers[name].data.shape == data.shape:
        layer = viewer.layers[name]
        layer.data = data
        layer.metadata = geometry["metadata"]
        return layer
    return viewer.add_image(data, name=name, **geometry, **kw)


def put_lesion_layer(viewer: Any, image: Any, outcome: SegmentOutcome, confirm: Confirm) -> Any:
    """Add the lesion Labels layer of ``outcome``, or update ``"<image> lesions"`` in place.

    If the existing layer was edited since it was predicted, ``confirm`` is asked
    first; "No" keeps it untouched and adds the new result as ``"<image> lesions (new)"``.
    """
    result = outcome.result
    name = lesions_name(image)
    meta = lesion_metadata(image, outcome)
    geometry = geometry_kwargs(image)
    existing = viewer.layers[name] if name in viewer.layers else None
    if existing is not None and (
        not is_labels(existing) or existing.data.shape != result.mask.shape
    ):
        existing, name = None, f"{name} (new)"
    if existing is not None and is_edited(existing):
        keep = not confirm(
            "Replace the edited lesion mask?",
            f"'{existing.name}' has been edited since it was predicted. Replace it with the "
            "new segmentation? (No keeps your edits and adds the new result as a separate layer.)",
        )
        if keep:
            existing, name = None, f"{name} (new)"
    if existing is None:
        geometry["metadata"] = meta
        return viewer.add_labels(result.mask, name=name, opacity=0.6, **geometry)
    existing.metadata = meta
    existing.scale, existing.translate = geometry["scale"], geometry["translate"]
    existing.affine = geometry["affine"]
    existing.data = result.mask  # last: listeners (the Correct widget) see the new metadata
    return existing


def extra_layer_steps(
    viewer: Any, image: Any, outcome: SegmentOutcome, *, probability: bool
) -> list[Callable[[], Any]]:
    """One callable per optional Image layer (probability, uncertainty, attention maps).

    The widget runs them one per event-loop turn, so napari stays responsive
    while several volumes are turned into layers.
    """
    result = outcome.result
    look = {"contrast_limits": (0, 255), "blending": "additive", "visible": False}
    wanted: list[tuple[str, np.ndarray, str, str]] = []
    if probability:
        wanted.append(("lesion probability", result.probability, "probability", "inferno"))
    if outcome.uncertainty_map is not None:
        wanted.append(("uncertainty", outcome.uncertainty_map, "uncertainty", "magma"))
    for k, alpha in enumerate(result.attention or [], start=1):
        wanted.append((f"attention {k}", alpha, "attention", "viridis"))
    return [
        partial(_put_image, viewer, image, f"{image.name} {what}", data, role, colormap=c, **look)
        for what, data, role, c in wanted
    ]
