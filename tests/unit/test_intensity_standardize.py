"""Lung-referenced intensity standardisation and the chest-wall rule of the restriction.

The standardisation moves a scanner's aerated lung (about -870 HU) to where the
bundled model's training images have it (about -1100 HU) and leaves soft tissue
where it is; the engine, the training datasets and learning within a volume
apply the same map.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from napari_covid_seg.inference import segment
from napari_covid_seg.inference.intensity import (
    Standardization,
    lung_landmark,
    standardization,
    standardize_spec,
)
from napari_covid_seg.inference.lungs import RIGHT_LUNG, lung_mask
from napari_covid_seg.inference.postprocess import restrict_to_lungs_checked
from napari_covid_seg.io import WINDOWED
from napari_covid_seg.io.orientation import to_canonical
from napari_covid_seg.io.phantom import make_phantom

SPEC = standardize_spec({"standardize": {"target_hu": -1100.0}})


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(24, 160, 160), spacing=(5.0, 1.8, 1.8), seed=3)


def test_map_moves_the_lung_landmark_and_keeps_soft_tissue(phantom):
    img, truth = phantom
    r = img.reorientation
    canon = to_canonical(img.data, r)
    lungs = to_canonical(truth.extra["lungs"], r)
    std = standardization(canon, lungs, "hu", SPEC)
    assert std is not None
    # the phantom's aerated lung is -860 HU (vessels and lesions raise the 25th percentile)
    assert -880 < std.landmark_hu < -780
    assert std.target_hu == pytest.approx(-1100.0, abs=0.5)
    mapped = std.apply(np.array([std.landmark_hu, 40.0], np.float32))
    np.testing.assert_allclose(mapped, [-1100.0, 40.0], atol=0.5)
    # the same map in 0..255 units agrees with the HU map
    v = (np.array([-900.0, -500.0, 0.0]) + 1350.0) * 255.0 / 1500.0
    hu_then_map = std.apply(np.array([-900.0, -500.0, 0.0]))
    win = std.in_windowed_units().apply(v)
    np.testing.assert_allclose(-1350.0 + win * 1500.0 / 255.0, hu_then_map, atol=1e-3)


def test_no_map_without_the_policy_or_with_implausible_lungs(phantom):
    img, truth = phantom
    lungs = truth.extra["lungs"]
    assert standardization(img.data, lungs, "hu", None) is None
    assert standardization(img.data, lungs, "hu", SPEC, plausible=False) is None
    assert standardization(img.data, np.zeros_like(lungs), "hu", SPEC) is None
    assert standardize_spec({"mode": "lungs"}) is None
    assert lung_landmark(img.data, np.zeros_like(lungs)) is None


def test_windowed_input_gets_the_same_landmark(phantom):
    img, truth = phantom
    v = np.clip((img.data.astype(np.float32) + 1350.0) * 255.0 / 1500.0, 0, 255).astype(np.uint8)
    lungs = truth.extra["lungs"]
    hu = standardization(img.data, lungs, "hu", SPEC)
    win = standardization(v, lungs, WINDOWED, SPEC)
    assert hu is not None and win is not None
    assert win.landmark_hu == pytest.approx(hu.landmark_hu, abs=8.0)
    assert win.scale == pytest.approx(hu.scale, rel=0.02)


#: What the probes saw, by probe name (the engine works on a deep copy of the module).
SEEN: dict[str, list[float]] = {}


class LungProbe(torch.nn.Module):
    """Records the darkest quarter of its input under ``SEEN[name]``; predicts nothing."""

    preprocessing: ClassVar[dict] = {
        "input_size": 256,
        "n_channels": 1,
        "threshold": 0.5,
        "roi": {"mode": "lungs", "margin": 0.08, "standardize": {"target_hu": -1100.0}},
    }

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        SEEN[name] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the darkest quarter of the input: aerated lung and the air fill around it
        SEEN[self.name].append(float(torch.quantile(x[:, 0].flatten().float(), 0.25)))
        return torch.full_like(x[:, :1], -20.0)


def test_engine_shows_the_model_standardised_lungs_and_reports_the_map(phantom):
    img, _ = phantom
    probe = LungProbe("on")
    res = segment(img, probe, device="cpu", precision="fp32")
    report = res.lung_report["standardize"]
    assert report["target_hu"] == pytest.approx(-1100.0, abs=1.0)
    assert report["scale"] > 1.1
    with_map = float(np.median(SEEN["on"]))
    off = LungProbe("off")
    off.preprocessing = {
        **LungProbe.preprocessing,
        "roi": {"mode": "lungs", "margin": 0.08},
    }
    res_off = segment(img, off, device="cpu", precision="fp32")
    assert "standardize" not in res_off.lung_report
    # the lungs the model sees are darker by about (1100 - 860) HU / 1500 in window units
    assert float(np.median(SEEN["off"])) - with_map > 0.05


def test_training_volumes_get_the_same_map(phantom):
    from napari_covid_seg.training.datasets import _standardized, _volume_roi

    img, _ = phantom
    r = img.reorientation
    canon = to_canonical(img.data, r)
    spacing = tuple(float(img.spacing[a]) for a in r.axes)
    std: list = []
    roi = {"mode": "lungs", "margin": 0.08, "standardize": {"target_hu": -1100.0}}
    assert _volume_roi(canon, "hu", spacing, roi, None, std) is not None
    assert isinstance(std[0], Standardization)
    out = _standardized(canon, std, "hu")
    assert out.dtype == canon.dtype
    lungs = lung_mask(img) > 0
    assert np.percentile(to_canonical(out, r)[to_canonical(lungs, r)], 25) == pytest.approx(
        -1100.0, abs=25.0
    )


def test_chest_wall_blob_apart_from_the_lung_goes_while_attached_consolidation_stays(phantom):
    img, truth = phantom
    data = img.data.copy()
    gt = truth.extra["lungs"]
    z = 12
    lungs = lung_mask(img.with_data(data))
    rows, cols = np.nonzero(gt[z] == RIGHT_LUNG)
    mid_row = int(np.median(rows))
    outer = int(cols.min())
    mask = np.zeros_like(lungs)
    # a blob in the chest wall, 9 px (16 mm) lateral of the lung, not touching it
    mask[z, mid_row - 4 : mid_row + 4, outer - 15 : outer - 9] = 1
    blob = mask[z].copy().astype(bool)
    # a lesion inside the lung that runs out to the pleura and 3 px beyond
    rim = (gt[z] == RIGHT_LUNG) & (np.arange(gt.shape[2]) < outer + 6)
    rim[: mid_row + 10] = False
    rim[mid_row + 18 :] = False
    attached = rim.copy()
    attached[mid_row + 10 : mid_row + 18, outer - 3 : outer] = True
    mask[z][attached] = 1
    prob = (mask * 240).astype(np.uint8)
    removed, reason = restrict_to_lungs_checked(mask, prob, lungs, img.spacing, image=data)
    assert reason == ""
    assert mask[z][blob].sum() == 0, "a blob apart from the lung was kept"
    assert mask[z][attached].mean() >= 0.95, "a lesion continuous with the lung was cut"
    assert removed >= blob.sum()


def test_smoothed_landmark_resists_the_noise_of_a_sharp_kernel(phantom):
    """Noise widens the lung histogram: a raw 25th percentile falls, a smoothed one barely moves."""
    img, truth = phantom
    r = img.reorientation
    canon = to_canonical(img.data, r).astype(np.float32)
    lungs = to_canonical(truth.extra["lungs"], r)
    spacing = tuple(float(img.spacing[a]) for a in r.axes)
    noisy = canon + np.random.default_rng(0).normal(0.0, 80.0, canon.shape).astype(np.float32)
    raw_shift = lung_landmark(noisy, lungs) - lung_landmark(canon, lungs)
    smooth = {"smooth_mm": 3.0, "spacing": spacing}
    smooth_shift = lung_landmark(noisy, lungs, **smooth) - lung_landmark(canon, lungs, **smooth)
    assert raw_shift < -30.0  # the raw percentile is pulled down by the noise
    assert abs(smooth_shift) < 0.3 * abs(raw_shift)
    # the policy's smooth_mm reaches the map (older versions: no key, raw percentile)
    spec = standardize_spec({"standardize": {"target_hu": -1100.0, "smooth_mm": 3.0}})
    a = standardization(noisy, lungs, "hu", spec, spacing=spacing)
    b = standardization(canon, lungs, "hu", spec, spacing=spacing)
    assert a is not None and b is not None
    assert abs(a.landmark_hu - b.landmark_hu) < 0.3 * abs(raw_shift)
    assert standardize_spec({"standardize": {"percentile": 25.0}})["smooth_mm"] == 0.0


def test_confident_predictions_in_empty_air_never_stop_the_restriction():
    """Sharp-kernel noise around the body can look like ground glass to the model.

    Confident voxels there are not a lung the mask missed: the restriction
    still applies (and removes them) instead of being skipped.
    """
    lungs = np.zeros((1, 80, 80), np.uint8)
    lungs[0, 10:50, 10:70] = RIGHT_LUNG
    image = np.full((1, 80, 80), -860.0, np.float32)
    image[0, 55:80] = np.random.default_rng(1).normal(-1000.0, 60.0, (25, 80))  # air below
    mask = np.zeros_like(lungs)
    mask[0, 20:25, 20:30] = 1  # 50 voxels of lesion in the lung
    mask[0, 58:70, 5:75] = 1  # 840 confident voxels in the noisy air under the patient
    prob = (mask * 250).astype(np.uint8)
    skipped = mask.copy()
    removed, reason = restrict_to_lungs_checked(skipped, prob, lungs, (5.0, 1.0, 1.0))
    assert removed == 0 and "confident" in reason  # without the image: looks like a missed lung
    removed, reason = restrict_to_lungs_checked(
        mask, prob, lungs, (5.0, 1.0, 1.0), image=image, empty_threshold=-900.0
    )
    assert reason == "" and removed == 840
    assert mask[0, 20:25, 20:30].all()


def test_a_blob_outside_a_rib_goes_while_consolidation_inside_it_stays():
    """The chest-wall muscles lie outside the ribs; consolidation lies between lung and rib.

    A synthetic slice at 1 mm: two lungs, a rib 7-10 mm lateral of the right
    lung, a scapula-like bone farther out (so the rib cage's convex hull holds
    the muscles between them). A prediction runs from the lung through the
    rib into those muscles: the part beyond the rib goes, the consolidation
    between lung and rib stays.
    """
    from napari_covid_seg.inference.lungs import LEFT_LUNG

    n = 160
    yy, xx = np.mgrid[0:n, 0:n]
    image = np.full((1, n, n), -1000.0, np.float32)
    image[0][((yy - 80) / 72.0) ** 2 + ((xx - 80) / 76.0) ** 2 < 1] = 40.0  # body
    lungs = np.zeros((1, n, n), np.uint8)
    for label, cx in ((RIGHT_LUNG, 55), (LEFT_LUNG, 105)):
        lungs[0][((yy - 80) / 40.0) ** 2 + ((xx - cx) / 18.0) ** 2 < 1] = label
    image[0][lungs[0] > 0] = -860.0
    for c0, c1, r0, r1 in ((27, 31, 70, 91), (14, 17, 66, 101)):  # rib, scapula; and mirrored
        image[0, r0:r1, c0:c1] = 400.0
        image[0, r0:r1, n - c1 : n - c0] = 400.0
    image[0, 110:118, 76:84] = 400.0  # spine
    mask = np.zeros_like(lungs)
    consolidation = np.zeros((n, n), bool)
    consolidation[74:87, 31:40] = True  # from the lung out to the rib's inner face
    muscles = np.zeros((n, n), bool)
    muscles[74:87, 17:23] = True  # between the rib and the scapula
    mask[0][consolidation | muscles] = 1
    mask[0, 79:82, 17:31] = 1  # through the rib
    prob = (mask * 240).astype(np.uint8)
    removed, reason = restrict_to_lungs_checked(mask, prob, lungs, (5.0, 1.0, 1.0), image=image)
    assert reason == ""
    assert mask[0][consolidation].mean() >= 0.95, "consolidation between lung and rib was cut"
    assert mask[0][muscles].mean() <= 0.2, "a blob outside the rib was kept"
    assert removed >= 0.8 * muscles.sum()
    # a window that saturates soft tissue (some 0..255 sets) has no ribs to go by:
    # "bone" is most of the body, and nothing is cut as behind it
    bright = np.where(image > -500.0, 400.0, image).astype(np.float32)
    m2 = np.zeros_like(lungs)
    m2[0][consolidation] = 1
    restrict_to_lungs_checked(m2, (m2 * 240).astype(np.uint8), lungs, (5.0, 1.0, 1.0), image=bright)
    assert m2[0][consolidation].mean() >= 0.95
