"""The lung mask on the scans users have, its plausibility checks, and the lung ROI.

Synthetic cases build on the phantom (canonical order: S, P, L); the real
cases use ../shared/data and skip where it is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_seg.inference import segment
from napari_covid_seg.inference.lungs import (
    LEFT_LUNG,
    RIGHT_LUNG,
    check_lungs,
    lung_mask,
    lung_mask_canonical,
)
from napari_covid_seg.inference.postprocess import restrict_to_lungs_checked
from napari_covid_seg.inference.roi import (
    Roi,
    choose_roi,
    crop_pad,
    crop_pad_tensor,
    paste_tensor,
    roi_for_canonical,
)
from napari_covid_seg.io import WINDOWED, Volume, read_volume
from napari_covid_seg.io.phantom import make_phantom
from tests.conftest import SEMISEG, SHARED_DATA, require


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(24, 160, 160), spacing=(5.0, 1.8, 1.8), seed=3)


def test_full_field_with_table_and_arms(phantom):
    img, truth = phantom
    data = img.data.copy()
    _n, h, w = data.shape
    yy, xx = np.mgrid[0:h, 0:w]
    # a table under the patient (an air gap between), arms beside the chest
    data[:, h - 8 : h - 4, 10 : w - 10] = 300
    for cx in (6, w - 7):
        arm = (xx - cx) ** 2 / 5**2 + (yy - h // 2) ** 2 / 14**2 <= 1
        data[:, arm] = 40
    lungs = lung_mask(img.with_data(data))
    gt = truth.extra["lungs"]
    assert dice(lungs == RIGHT_LUNG, gt == RIGHT_LUNG) > 0.95
    assert dice(lungs == LEFT_LUNG, gt == LEFT_LUNG) > 0.95
    assert not lungs[:, h - 12 :, :].any()  # nothing at the table
    assert check_lungs(lungs, img.spacing).plausible


def test_tight_crop_whose_lungs_touch_the_border(phantom):
    img, truth = phantom
    gt = truth.extra["lungs"]
    rows = np.flatnonzero(gt.any(axis=(0, 2)))
    cols = np.flatnonzero(gt.any(axis=(0, 1)))
    crop = (slice(None), slice(rows[0] + 4, rows[-1] - 3), slice(cols[0] + 3, cols[-1] - 2))
    data, gt_c = np.ascontiguousarray(img.data[crop]), gt[crop]
    assert (gt_c[:, 0, :] > 0).any() and (gt_c[:, :, 0] > 0).any()  # cut by the crop
    vol = Volume(data=data, affine=img.affine)
    lungs = lung_mask(vol)
    assert dice(lungs > 0, gt_c > 0) > 0.9
    # and as single slices (2D images), one by one
    for z in (8, 12, 16):
        one = lung_mask(Volume(data=data[z : z + 1], affine=img.affine))
        assert dice(one[0] > 0, gt_c[z] > 0) > 0.9


def test_lung_bases_with_bowel_gas_below(phantom):
    img, truth = phantom
    _n, h, w = img.data.shape
    # An "abdominal" scan: 18 slices of abdomen with a large gas-filled bowel loop,
    # then the lowest 6 slices of the phantom (the lung bases).
    bases = img.data[2:8]
    belly = np.full((18, h, w), -1000, np.int16)
    body = img.data[0] > -500
    belly[:, body] = 40
    yy, xx = np.mgrid[0:h, 0:w]
    gas = ((yy - 0.35 * h) / 16) ** 2 + ((xx - w / 2) / 40) ** 2 <= 1
    belly[3:17, gas] = -990
    vol = Volume(data=np.concatenate([belly, bases]), affine=img.affine)
    lungs = lung_mask(vol)
    assert not lungs[:18].any(), "bowel gas taken for lung"
    gt = truth.extra["lungs"][2:8]
    assert dice(lungs[18:] > 0, gt > 0) > 0.85


def test_windowed_0_255_input_with_its_own_window(phantom):
    img, truth = phantom
    gt = truth.extra["lungs"]
    for lo, hi in ((-1350.0, 150.0), (-1400.0, 600.0)):  # lung window; a darker, wider one
        v = np.clip((img.data.astype(np.float32) - lo) * 255 / (hi - lo), 0, 255)
        lungs = lung_mask(Volume(data=v.astype(np.uint8), affine=img.affine, intensity=WINDOWED))
        assert dice(lungs > 0, gt > 0) > 0.93, (lo, hi)


def test_dense_edge_consolidation_is_never_carved_out(phantom):
    img, truth = phantom
    data = img.data.copy()
    gt = truth.extra["lungs"]
    z = 12
    cols = np.nonzero(gt[z] == RIGHT_LUNG)[1]
    # consolidate the outer (lateral) third of the right lung on one slice: it is
    # no longer air, so the threshold mask misses it
    third = cols.min() + (cols.max() - cols.min()) // 3
    edge = (gt[z] == RIGHT_LUNG) & (np.arange(gt.shape[2]) < third)
    data[z][edge] = 30
    lungs = lung_mask(img.with_data(data))
    assert not lungs[z][edge].all()  # the air mask does miss it...
    mask = np.zeros_like(lungs)
    mask[z][edge] = 1
    prob = mask * 240
    removed, reason = restrict_to_lungs_checked(
        mask, prob.astype(np.uint8), lungs, img.spacing, image=data
    )
    # ...but the restriction keeps it (rib cage), up to a few voxels on the ribs themselves
    assert reason == "" and removed <= 0.01 * edge.sum()
    assert mask[z][edge].mean() >= 0.99
    # while a false positive on the table under the patient (bright, like bone) goes
    h = data.shape[1]
    table = data.copy()
    table[:, h - 8 : h - 4, 20:-20] = 300
    mask2 = mask.copy()
    mask2[z, h - 7, 60:70] = 1
    removed, reason = restrict_to_lungs_checked(
        mask2, (mask2 * 240).astype(np.uint8), lungs, img.spacing, image=table
    )
    assert reason == "" and mask2[z, h - 7, 60:70].sum() == 0
    assert mask2[z][edge].mean() >= 0.99


def test_restriction_is_skipped_when_it_would_remove_most_confident_lesions():
    lungs = np.zeros((1, 80, 80), np.uint8)
    lungs[0, 20:40, 10:30] = RIGHT_LUNG  # the mask found one small lung only
    mask = np.zeros_like(lungs)
    mask[0, 25:35, 15:25] = 1  # 100 voxels inside
    mask[0, 30:60, 45:75] = 1  # 900 confident voxels where the other lung is
    prob = (mask * 250).astype(np.uint8)
    before = mask.copy()
    removed, reason = restrict_to_lungs_checked(mask, prob, lungs, (5.0, 1.0, 1.0))
    assert removed == 0 and "confident" in reason
    np.testing.assert_array_equal(mask, before)
    # low-confidence far predictions are removed as usual
    prob[0, 30:60, 45:75] = 140
    removed, reason = restrict_to_lungs_checked(mask, prob, lungs, (5.0, 1.0, 1.0))
    assert reason == "" and removed == 900


def test_check_lungs_flags_implausible_masks():
    empty = np.zeros((10, 40, 40), np.uint8)
    assert check_lungs(empty, (5.0, 1.0, 1.0)).reason == "no lungs found"
    tiny = empty.copy()
    tiny[4, 10:12, 10:12] = RIGHT_LUNG
    c = check_lungs(tiny, (5.0, 1.0, 1.0))
    assert not c.plausible and "mL" in c.reason
    lopsided = np.zeros((40, 60, 60), np.uint8)
    lopsided[:, 5:55, 2:28] = RIGHT_LUNG  # 40 slices x 5 mm = 200 mm of lungs in view
    lopsided[:, 30:33, 40:43] = LEFT_LUNG
    c = check_lungs(lopsided, (5.0, 1.0, 1.0))
    assert not c.plausible and "differ" in c.reason
    one_slice = np.zeros((1, 100, 100), np.uint8)
    one_slice[0, 50, 50] = LEFT_LUNG
    assert not check_lungs(one_slice, (5.0, 1.0, 1.0)).plausible


def test_segment_reports_a_skipped_restriction(phantom):
    import torch

    class Everywhere(torch.nn.Module):
        def forward(self, x):
            return torch.full_like(x[:, :1], 5.0)

    img, _ = phantom
    res = segment(img, Everywhere(), lungs=np.zeros(img.data.shape, np.uint8), uncertainty=False)
    rep = res.lung_report
    assert rep["status"] == "skipped" and "no lungs found" in rep["reason"]
    assert any("restriction skipped" in m for m in res.messages)
    assert res.mask.all()  # nothing was deleted
    ok = segment(img, Everywhere(), uncertainty=False)
    assert ok.lung_report["status"] in ("ok", "skipped")
    assert ok.lung_report["right_ml"] > 100 and ok.lung_report["left_ml"] > 100


# -- the lung ROI ---------------------------------------------------------------------------------


def test_roi_crop_pad_and_paste_round_trip():
    import torch

    x = np.arange(30 * 40, dtype=np.float32).reshape(1, 30, 40)
    roi = Roi(-5, 35, 10, 50)  # past the top, bottom and right edges
    c = crop_pad(x, roi, -1000.0)
    assert c.shape == (1, 40, 40)
    assert c[0, 0, 0] == -1000.0 and c[0, 5, 0] == x[0, 0, 10]
    t = crop_pad_tensor(torch.from_numpy(x), roi, -1000.0)
    np.testing.assert_array_equal(t.numpy(), c)
    back = paste_tensor(t, roi, 30, 40, -30.0).numpy()
    np.testing.assert_array_equal(back[:, :, 10:], x[:, :, 10:])
    assert (back[:, :, :10] == -30.0).all()


def test_roi_is_the_lungs_box_symmetric_about_the_body(phantom):
    img, truth = phantom
    canon = img.data  # the phantom is stored in canonical order
    lungs = truth.extra["lungs"]
    roi = choose_roi(canon, lungs, spec={"margin": 0.08}, threshold=-320.0)
    rows = np.flatnonzero(lungs.any(axis=(0, 2)))
    cols = np.flatnonzero(lungs.any(axis=(0, 1)))
    assert roi.source == "lungs" and roi.y1 - roi.y0 == roi.x1 - roi.x0
    assert roi.y0 < rows[0] and roi.y1 > rows[-1] and roi.x0 < cols[0] and roi.x1 > cols[-1]
    # only the right lung found (the left one whited out): the box still covers both
    right_only = np.where(lungs == RIGHT_LUNG, lungs, 0)
    roi1 = choose_roi(canon, right_only, spec={"margin": 0.08}, threshold=-320.0)
    assert roi1.x1 > cols[-1] - 2


def test_model_sees_the_lungs_at_one_scale_whatever_the_field_of_view(phantom):
    """The crops a model is trained on and a full field of view reach it at the same scale."""
    import torch

    seen: list = []  # outside the module: the engine works on a copy of the model

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(x[:, 0].detach().clone())
            return torch.zeros_like(x[:, :1])

    img, _truth = phantom
    spec = {"input_size": 128, "roi": {"mode": "lungs", "margin": 0.08}}
    widths = []
    for pad in (0, 120):  # as is, and inside a field of view twice as wide
        data = np.pad(img.data, ((0, 0), (pad, pad), (pad, pad)), constant_values=-1000)
        seen.clear()
        vol = Volume(data=data, affine=img.affine)
        segment(vol, Recorder(), preprocessing=spec, uncertainty=False, batch_size=64)
        z = img.data.shape[0] // 2
        lung_cols = (torch.cat(seen)[z] < 0.3).any(dim=0).nonzero()  # dark (aerated) columns
        widths.append(int(lung_cols.max() - lung_cols.min()))
    assert abs(widths[0] - widths[1]) <= 4, widths
    assert widths[0] > 0.7 * 128


# -- real data ------------------------------------------------------------------------------------


def test_real_full_field_chest_ct():
    path = require(SHARED_DATA / "chest-ct" / "lung_dx_a0002_chest.nii.gz")
    vol = read_volume(path)
    lungs = lung_mask(vol)
    c = check_lungs(lungs, vol.spacing, axial_axis=vol.reorientation.axial_axis)
    assert c.plausible
    assert 800 < c.right_ml < 4000 and 800 < c.left_ml < 4000  # 240 mm of an adult chest
    from napari_covid_seg.io.orientation import to_canonical

    canon = to_canonical(lungs, vol.reorientation)
    h = canon.shape[1]
    assert not canon[:, int(0.85 * h) :, :].any()  # table and the air above it excluded


def test_real_abdominal_ct_finds_the_lung_bases_not_the_bowel():
    path = require(SHARED_DATA / "ct-example" / "example_ct.nii.gz")
    vol = read_volume(path)
    from napari_covid_seg.io.orientation import to_canonical

    canon = to_canonical(lung_mask(vol), vol.reorientation)
    s = np.flatnonzero(canon.any(axis=(1, 2)))
    assert len(s) and s.min() >= 95  # only the top slices (3 mm): the bases, not the bowel
    assert check_lungs(canon, vol.spacing).plausible


def test_real_covid_crops_lung_roi_keeps_the_lesions():
    """All 50 expert slices, as tight crops and inside a full field of view."""
    from napari_covid_seg.training.acquisition import VARIANTS, windowed_to_hu
    from napari_covid_seg.training.evaluate import load_labelled_slices

    require(SEMISEG)
    rng = np.random.default_rng(0)
    found = lost = total = 0
    for _, img, msk in load_labelled_slices(SEMISEG, transpose=True):
        for variant in ("tight_crop", "full_field"):
            hu, m = VARIANTS[variant](windowed_to_hu(img), msk, rng)
            roi = roi_for_canonical(hu[None], "hu", (5.0, 0.7, 0.7), {"margin": 0.08})
            inside = np.zeros(m.shape, bool)
            inside[max(roi.y0, 0) : roi.y1, max(roi.x0, 0) : roi.x1] = True
            lost += int(m[~inside].sum())
            total += int(m.sum())
            assert m[~inside].sum() <= 0.01 * m.sum()  # at most 1 % of one slice's lesion
            found += roi.source == "lungs"
            if variant == "full_field":  # the chest, not the whole canvas
                assert roi.side < 0.85 * hu.shape[0]
    assert found >= 95  # the lung mask works on (nearly) all 100
    assert lost <= 0.001 * total


def test_lung_mask_canonical_on_an_empty_slice():
    assert lung_mask_canonical(np.full((1, 32, 32), 40, np.int16)).sum() == 0


def test_clutter_is_the_table_and_arms_never_the_chest(phantom):
    from napari_covid_seg.inference.roi import clutter_mask

    img, truth = phantom
    pad = ((0, 0), (0, 12), (20, 20))  # room for arms beside the chest and a table below
    data = np.pad(img.data, pad, constant_values=-1000)
    lungs = np.pad(truth.extra["lungs"], pad)
    _n, h, w = data.shape
    yy, xx = np.mgrid[0:h, 0:w]
    table = np.zeros((h, w), bool)
    table[h - 6 : h - 2, 10 : w - 10] = True
    arm = ((xx - 8) ** 2 / 5**2 + (yy - h // 2) ** 2 / 14**2 <= 1) | (
        (xx - (w - 9)) ** 2 / 5**2 + (yy - h // 2) ** 2 / 14**2 <= 1
    )
    body = data > -320
    data[:, table] = 300
    data[:, arm] = 40
    clutter = clutter_mask(data, lungs, -320.0)
    assert clutter[:, table].all() and clutter[:, arm].all()
    assert not (clutter & body).any()
    # a slice without lungs keeps its largest region (the body), drops the rest
    no_lungs = np.zeros_like(lungs)
    c2 = clutter_mask(data, no_lungs, -320.0)
    assert c2[:, table].all() and not (c2 & body).any()
