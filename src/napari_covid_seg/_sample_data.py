"""npe2 sample data: the synthetic chest CT phantom and its lesion truth."""

from __future__ import annotations

from .io.phantom import make_phantom


def make_sample_ct() -> list[tuple]:
    """Phantom chest CT (HU) with lung window, and its ground-truth lesions."""
    from ._reader import volume_to_layer_data

    image, truth = make_phantom()
    img = volume_to_layer_data(image, name="sample CT")
    lab_data, lab_kw, _ = volume_to_layer_data(truth, name="sample CT truth")
    lab_kw["visible"] = False
    lab_kw["opacity"] = 0.5
    return [img, (lab_data, lab_kw, "labels")]
