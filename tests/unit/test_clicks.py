"""Click to fix, model side: guidance channels, warm start, click maps, click simulation,
a click model that learns from clicks, and ClickSegmenter.fix_slice (no Qt)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from napari_covid_seg.correction.clicks import (
    Click,
    ClickSegmenter,
    click_maps,
    dice,
    disk_map,
    interior_point,
    largest_error_region,
    native_radius,
    next_click,
)
from napari_covid_seg.errors import ModelLoadError
from napari_covid_seg.inference.engine import Predictor
from napari_covid_seg.inference.roi import Roi
from napari_covid_seg.models import build_model
from napari_covid_seg.models.checkpoint import load_model_version, save_model_version
from napari_covid_seg.models.guidance import (
    add_guidance_channels,
    click_preprocessing,
    guidance_spec,
)
from napari_covid_seg.models.store import ModelStore, bundled_models_dir

from ..conftest import SEMISEG, require

NATIVE_PP = {"input_size": 256, "n_channels": 3, "threshold": 0.5}


def _tiny(name: str = "unet") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        name, encoder_channels=(8, 8, 16, 16, 16), decoder_channels=(16, 16, 8, 8, 8)
    ).eval()


# -- warm start -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["res_att_unet", "unet"])
def test_zero_guidance_warm_start_equals_the_base(name):
    torch.manual_seed(0)
    base = build_model(name).eval() if name == "res_att_unet" else _tiny(name)
    click = add_guidance_channels(base).eval()
    assert click.config.in_channels == 6 and base.config.in_channels == 3
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a = base(x)
        b = click(torch.cat([x, torch.zeros(2, 3, 64, 64)], dim=1))
    assert torch.equal(a, b)
    # through the Predictor: guidance None == zeros == the base model
    pp = click_preprocessing(NATIVE_PP, radius_px=5)
    assert pp["n_channels"] == 6 and guidance_spec(pp)["radius_px"] == 5
    slices = torch.randint(-1300, 100, (2, 80, 96)).to(torch.int16)
    pa = Predictor(base, NATIVE_PP, device="cpu", precision="fp32")
    pb = Predictor(click, pp, device="cpu", precision="fp32")
    la, _ = pa.forward(slices, "hu", roi=Roi(-5, 95, -2, 98))
    lb, _ = pb.forward(slices, "hu", roi=Roi(-5, 95, -2, 98))
    lc, _ = pb.forward(slices, "hu", roi=Roi(-5, 95, -2, 98), guidance=torch.zeros(2, 3, 80, 96))
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)
    torch.testing.assert_close(lb, lc, rtol=0, atol=0)


def test_warm_started_bundled_default_gives_the_same_logits():
    path = bundled_models_dir() / "default"
    if not (path / "model.json").is_file():
        pytest.skip("no bundled default model in this checkout")
    mv = load_model_version(path)
    click = add_guidance_channels(mv.model)
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        a = mv.model(x)
        b = click(torch.cat([x, torch.zeros(1, 3, 256, 256)], dim=1))
    assert torch.equal(a, b)


def test_a_click_model_version_round_trips(tmp_path):
    click = add_guidance_channels(_tiny())
    pp = click_preprocessing(NATIVE_PP, radius_px=4)
    save_model_version(tmp_path / "click", click, preprocessing=pp, name="click")
    mv = load_model_version(tmp_path / "click")
    assert mv.config.in_channels == 6 and mv.preprocessing["guidance"]["radius_px"] == 4
    x = torch.rand(1, 6, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(mv.model(x), click(x))


# -- click maps -----------------------------------------------------------------------------------


class _Spy(torch.nn.Module):
    """Records its input (class attribute: Predictor deep-copies the module)."""

    seen: ClassVar[list[torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _Spy.seen.append(x.detach().float().clone())
        return torch.zeros(x.shape[0], 1, *x.shape[-2:])


def test_click_maps_land_where_clicked_with_the_right_radius_through_an_roi():
    assert native_radius(5, 512) == pytest.approx(10.0)
    m = disk_map((40, 40), [(10, 20)], 3)
    assert m[10, 20] == 1 and m[10, 23] == 1 and m[10, 24] == 0 and m.sum() == 29
    # a 400 x 300 slice, ROI a 320 px square sticking out past the top
    h, w = 400, 300
    roi = Roi(-40, 280, -10, 310)
    click = (100.0, 150.0)
    radius = native_radius(5, roi.side)
    maps = click_maps((h, w), [click], [(250.0, 60.0)], radius)
    guidance = torch.from_numpy(np.concatenate([maps, np.zeros((1, h, w), np.float32)])[None])
    pp = click_preprocessing({"input_size": 256, "n_channels": 3}, radius_px=5)
    _Spy.seen.clear()
    p = Predictor(_Spy(), pp, device="cpu", precision="fp32", fuse=False)
    p.forward(torch.full((1, h, w), -800, dtype=torch.int16), "hu", roi=roi, guidance=guidance)
    x = _Spy.seen[-1][0]
    assert x.shape == (6, 256, 256)
    scale = 256 / roi.side
    pos = x[3]
    area = float(pos.sum())
    assert area == pytest.approx(np.pi * 5**2, rel=0.25)
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    cy, cx = float((pos * yy).sum() / area), float((pos * xx).sum() / area)
    assert cy == pytest.approx((click[0] - roi.y0 + 0.5) * scale - 0.5, abs=1.0)
    assert cx == pytest.approx((click[1] - roi.x0 + 0.5) * scale - 0.5, abs=1.0)
    neg = x[4]
    ny = float((neg * yy).sum() / neg.sum())
    assert ny == pytest.approx((250 - roi.y0 + 0.5) * scale - 0.5, abs=1.0)
    assert float(x[5].abs().sum()) == 0.0  # empty mask channel
    assert float(x[:3].std()) == 0.0 or torch.equal(x[0], x[1])  # replicated image


# -- click simulation -----------------------------------------------------------------------------


def _disk(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_next_click_lies_inside_the_largest_error_region():
    shape = (100, 120)
    big, small = _disk(shape, 40, 40, 15), _disk(shape, 70, 95, 6)
    truth = big | small
    pred = small.copy()  # the big lesion is missed
    c = next_click(pred, truth)
    assert c is not None and c.positive and big[c.row, c.col]
    assert (c.row, c.col) == (40, 40)  # the interior point: farthest from the border
    # a false positive larger than any missed region -> a negative click inside it
    fp = _disk(shape, 20, 100, 12)
    c = next_click(truth | fp, truth)
    assert c is not None and not c.positive and fp[c.row, c.col]
    region, positive = largest_error_region(truth | fp, truth)
    assert not positive and region.sum() == fp.sum()
    assert next_click(truth, truth) is None
    # a region touching the image edge: the interior point keeps off the edge
    edge = np.zeros(shape, bool)
    edge[:10, :50] = True
    r, col = interior_point(edge)
    assert 3 <= r <= 6 and 3 <= col <= 46


def test_max_distance_rule_clicks_the_thickest_error_not_the_largest():
    shape = (100, 120)
    truth = np.zeros(shape, bool)
    truth[20:26, 5:115] = True  # a long thin missed band: the largest error by area (660 px)
    blob = _disk(shape, 70, 40, 9)  # a round false positive: smaller (~250 px), thicker
    pred = blob.copy()
    assert truth.sum() > blob.sum()
    c = next_click(pred, truth)  # the default: the largest region's interior point
    assert c is not None and c.positive and truth[c.row, c.col]
    c = next_click(pred, truth, rule="max_distance")  # RITM: the farthest from any border
    assert c is not None and not c.positive and (c.row, c.col) == (70, 40)
    assert next_click(truth, truth, rule="max_distance") is None
    with pytest.raises(ValueError, match="click rule"):
        next_click(pred, truth, rule="centre")


# -- a click model learns from clicks -------------------------------------------------------------


def test_a_tiny_click_model_learns_to_use_the_clicks():
    """The image says nothing about where the lesion is; the positive click does."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = add_guidance_channels(_tiny()).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    s, n = 64, 8

    def batch():
        x = torch.rand(n, 3, s, s)
        truth = np.zeros((n, s, s), bool)
        g = np.zeros((n, 3, s, s), np.float32)
        for i in range(n):
            cy, cx = rng.integers(14, 50, 2)
            truth[i] = _disk((s, s), cy, cx, 10)
            g[i, 0] = disk_map((s, s), [(cy, cx)], 3)
        return torch.cat([x, torch.from_numpy(g)], 1), torch.from_numpy(truth)[:, None].float()

    def score() -> float:
        model.eval()
        x, y = batch()
        with torch.no_grad():
            p = model(x)[:, 0] > 0
        model.train()
        return float(
            np.mean([dice(a, b) for a, b in zip(p.numpy(), y[:, 0].numpy() > 0, strict=True)])
        )

    before = score()
    for _ in range(60):
        x, y = batch()
        logits = model(x)
        p = torch.sigmoid(logits)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + (
            1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = score()
    assert after > 0.6 and after > before + 0.3, (before, after)


# -- ClickSegmenter.fix_slice ---------------------------------------------------------------------


class CopyClicks(torch.nn.Module):
    """A stand-in click model: the current mask, plus positive disks, minus negative disks."""

    preprocessing: ClassVar[dict] = click_preprocessing(
        {
            "input_size": 256,
            "n_channels": 3,
            "threshold": 0.5,
            "roi": {"mode": "lungs", "margin": 0.08},
        },
        radius_px=6,
    )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos, neg, mask = x[:, 3:4], x[:, 4:5], x[:, 5:6]
        return 40.0 * (mask + pos - 2.0 * neg - 0.5)


def _chest(h: int = 300, w: int = 340) -> np.ndarray:
    """A synthetic HU slice: air, a body ellipse, two lungs."""
    img = np.full((h, w), -1000, np.int16)
    yy, xx = np.ogrid[:h, :w]
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 <= 1
    img[body] = 40
    for cx in (0.3 * w, 0.7 * w):
        lung = ((yy - h / 2) / (0.3 * h)) ** 2 + ((xx - cx) / (0.15 * w)) ** 2 <= 1
        img[lung] = -850
    return img


def test_fix_slice_grows_the_mask_at_a_positive_click_on_a_missed_blob():
    seg = ClickSegmenter(CopyClicks())
    img = _chest()
    mask = np.zeros(img.shape, bool)
    mask[140:160, 90:110] = True  # a lesion already found in the right lung
    missed = (150, 240)  # a missed blob in the left lung
    out = seg.fix_slice(img, mask, [missed], [], spacing_yx_mm=(0.8, 0.8), intensity="hu")
    assert out.dtype == bool and out.shape == img.shape
    assert out[missed] and not mask[missed]
    grown = out & ~mask
    rows, cols = np.nonzero(grown)
    assert abs(rows.mean() - missed[0]) < 2 and abs(cols.mean() - missed[1]) < 2
    side = seg.context(img, spacing_yx_mm=(0.8, 0.8)).roi.side
    radius = native_radius(6, side)
    assert grown.sum() == pytest.approx(np.pi * radius**2, rel=0.35)
    assert out[mask].mean() > 0.95  # the existing lesion is kept
    assert set(seg.timings) >= {"context", "model", "total"}
    # a negative click removes it again; an explicit ROI (a volume's) is honoured
    again = seg.fix_slice(img, out, [], [missed], spacing_yx_mm=(0.8, 0.8), roi=(0, 300, 20, 320))
    assert not again[missed]
    assert seg.context(img, spacing_yx_mm=(0.8, 0.8), roi=(0, 300, 20, 320)).roi.side == 300


def test_fix_slice_refuses_an_automatic_model():
    with pytest.raises(ValueError, match="no guidance channels"):
        ClickSegmenter(_tiny())


# -- the store ------------------------------------------------------------------------------------


def test_bundled_click_resolves_like_default(tmp_path):
    bundled = tmp_path / "bundled"
    save_model_version(
        bundled / "click",
        add_guidance_channels(_tiny()),
        preprocessing=click_preprocessing(NATIVE_PP),
        name="click",
    )
    store = ModelStore(root=tmp_path / "user", bundled_dir=bundled)
    assert store.resolve("click") == bundled / "click"
    with pytest.raises(ModelLoadError, match="No bundled click model"):
        ModelStore(root=tmp_path / "user", bundled_dir=tmp_path / "none").resolve("click")


def test_the_bundled_click_model_without_clicks_is_an_automatic_model():
    """Real data, one validation slice: 0 clicks via fix_slice == segment (no restriction)."""
    if not (bundled_models_dir() / "click" / "model.json").is_file():
        pytest.skip("no bundled click model in this checkout")
    root = require(SEMISEG)
    from napari_covid_seg.inference import segment
    from napari_covid_seg.training.acquisition import slice_volume, windowed_to_hu
    from napari_covid_seg.training.evaluate import load_labelled_slices

    ((_, img, truth),) = load_labelled_slices(root, transpose=True, ids=["25"])
    vol = slice_volume(windowed_to_hu(img))
    seg = ClickSegmenter("click")
    res = segment(vol, seg.predictor, restrict_to_lungs=False, uncertainty=False)
    box = res.lung_report["roi"]["box"]
    auto = seg.fix_slice(vol.data[0], None, roi=box, spacing_yx_mm=(0.7, 0.7))
    assert np.array_equal(auto, res.mask[0] > 0)
    c = next_click(auto, truth > 0)
    assert isinstance(c, Click)
    fixed = seg.fix_slice(
        vol.data[0],
        auto,
        *(([(c.row, c.col)], []) if c.positive else ([], [(c.row, c.col)])),
        roi=box,
        spacing_yx_mm=(0.7, 0.7),
    )
    assert dice(fixed, truth > 0) >= dice(auto, truth > 0) - 0.01


def test_every_click_holds_after_enforcement():
    from napari_covid_seg.correction.clicks import enforce_clicks

    h = w = 80
    prob = np.zeros((h, w), np.float32)
    prob[_disk((h, w), 20, 20, 8)] = 0.9  # a confident true lesion
    prob[_disk((h, w), 20, 20, 12) & ~_disk((h, w), 20, 20, 8)] = 0.6  # a halo around it
    prob[_disk((h, w), 60, 60, 6)] = 0.8  # a false-positive blob
    prob[_disk((h, w), 60, 20, 6)] = 0.3  # a missed lesion the model is unsure of
    # no clicks: the model's mask as is
    plain = enforce_clicks(prob, None, [], [], radius=2.0)
    np.testing.assert_array_equal(plain, prob > 0.5)
    out = enforce_clicks(prob, None, [(60, 20)], [(60, 60), (20, 31)], radius=2.0)
    assert out[60, 20] and out[_disk((h, w), 60, 20, 5)].all(), "the positive click's region"
    assert not out[_disk((h, w), 60, 60, 6)].any(), "the negative click's blob stays"
    assert not out[20, 31], "the halo under a negative click stays"
    assert out[_disk((h, w), 20, 20, 8)].all(), "the confident core went with the halo"
    # a negative click never removes a positive click's disk
    both = enforce_clicks(prob, None, [(20, 20)], [(20, 22)], radius=2.0)
    assert both[20, 20]


def test_local_enforcement_leaves_far_regions_as_they_were():
    from napari_covid_seg.correction.clicks import enforce_clicks

    h = w = 80
    prob = np.zeros((h, w), np.float32)
    prob[_disk((h, w), 20, 20, 8)] = 0.9
    current = np.zeros((h, w), bool)
    current[_disk((h, w), 60, 60, 5)] = True  # the user's own lesion, which the model drops
    out = enforce_clicks(prob, current, [(20, 20)], [], radius=2.0, local=True)
    assert out[_disk((h, w), 20, 20, 8)].all() and out[current].all()
    glob = enforce_clicks(prob, current, [(20, 20)], [], radius=2.0, local=False)
    assert not glob[current].any()


def test_the_volumes_map_from_lung_report_becomes_a_standardization():
    from napari_covid_seg.correction.clicks import _as_standardization
    from napari_covid_seg.inference.intensity import Standardization

    std = _as_standardization({"scale": 1.25, "offset": -10.0, "landmark_hu": -870.0})
    assert isinstance(std, Standardization)
    assert std.apply(np.array([-870.0]))[0] == pytest.approx(-1097.5)
    assert _as_standardization(None) is None and _as_standardization({"x": 1}) is None


def test_model_input_gives_click_models_zero_guidance():
    from napari_covid_seg.models.guidance import click_preprocessing, model_input

    x = torch.rand(2, 1, 8, 8)
    auto = model_input(x, 3, {"n_channels": 3})
    assert auto.shape == (2, 3, 8, 8) and torch.equal(auto[:, 2], x[:, 0])
    click = model_input(x, 6, click_preprocessing({"n_channels": 3}))
    assert click.shape == (2, 6, 8, 8)
    assert torch.equal(click[:, :3], auto) and not click[:, 3:].any()


def test_no_clicks_on_a_noisy_slice_still_equal_segment_with_its_automatic_flips():
    """segment() flips noisy scans by itself; fix_slice with no clicks follows it exactly."""
    if not (bundled_models_dir() / "click" / "model.json").is_file():
        pytest.skip("no bundled click model in this checkout")
    from napari_covid_seg.inference import segment
    from napari_covid_seg.io.orientation import to_canonical
    from napari_covid_seg.io.phantom import make_phantom
    from napari_covid_seg.training.acquisition import slice_volume

    img, _ = make_phantom(shape=(16, 192, 192), spacing=(5.0, 1.6, 1.6), seed=4)
    hu = to_canonical(img.data, img.reorientation)[8].astype(np.float32)
    hu += np.random.default_rng(0).normal(0.0, 90.0, hu.shape).astype(np.float32)
    vol = slice_volume(np.clip(np.rint(hu), -1024, 3071).astype(np.int16))
    seg = ClickSegmenter("click")
    res = segment(vol, seg.predictor, restrict_to_lungs=False, uncertainty=False)
    assert res.tta["on"] is True  # noisy: segment turned the flips on
    box = res.lung_report["roi"]["box"]
    kw = {"roi": box, "spacing_yx_mm": (0.7, 0.7), "standardize": res.lung_report["standardize"]}
    auto = seg.fix_slice(vol.data[0], None, **kw)
    assert np.array_equal(auto, res.mask[0] > 0)
    # the widget passes segment's decision; without flips the mask is another one
    assert np.array_equal(seg.fix_slice(vol.data[0], None, tta=True, **kw), auto)
    assert not np.array_equal(seg.fix_slice(vol.data[0], None, tta=False, **kw), auto)
