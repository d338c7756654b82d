"""Fine-tuning that does no harm: frozen BatchNorm, decoder-only, L2-SP, leak-free splits,
the held-out comparison and the switch decision (no Qt)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_covid_seg.io.dataset_export import export_case  # noqa: E402
from napari_covid_seg.io.phantom import make_phantom  # noqa: E402
from napari_covid_seg.training import finetune as ft  # noqa: E402
from napari_covid_seg.training import finetune_run as fr  # noqa: E402
from napari_covid_seg.training.datasets import SliceDataset  # noqa: E402

TINY = {"encoder_channels": [8, 16, 16, 32, 32], "decoder_channels": [32, 16, 16, 8, 8]}


def tiny_model():
    from napari_covid_seg.models import build_model

    torch.manual_seed(0)
    return build_model("unet", **TINY)


def fake_data(case_ids, slice_ids, by_case=True):
    n = len(slice_ids)
    return SliceDataset(
        images=np.zeros((n, 8, 8), np.float16),
        masks=np.zeros((n, 8, 8), np.uint8),
        case_ids=list(case_ids),
        slice_ids=list(slice_ids),
        by_case=by_case,
    )


def test_freeze_batchnorm_keeps_running_stats_and_state_dict_keys():
    model = tiny_model()
    keys = list(model.state_dict())
    undo = ft.freeze_batchnorm(model)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model.train()
    assert not bn.training  # train() leaves BN in eval mode
    model(torch.rand(2, 3, 32, 32) * 5)
    assert torch.equal(bn.running_mean, before)
    assert list(model.state_dict()) == keys
    undo()
    model.train()
    assert bn.training and type(bn) is torch.nn.BatchNorm2d


def test_decoder_only_and_l2sp_pull():
    model = tiny_model()
    n_all = ft.set_trainable(model, "all")
    n_dec = ft.set_trainable(model, "decoder")
    assert 0 < n_dec < n_all
    assert not any(p.requires_grad for p in model.encoder.parameters())
    with pytest.raises(ValueError):
        ft.set_trainable(model, "head")
    ft.set_trainable(model, "all")
    hook = ft.l2sp_hook(model, strength=1000.0)
    p = next(model.parameters())
    start = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)

    class T:  # the trainer's optimizer at lr 1e-4 -> rate 0.1
        optimizer = type("O", (), {"param_groups": [{"lr": 1e-4}]})()

    hook(T(), {})
    assert torch.allclose(p - start, torch.full_like(p, 0.9), atol=1e-5)


def test_holdout_split_never_leaks():
    # several cases: whole cases out; one CT exported twice (same key) is one group
    data = fake_data(
        ["a"] * 4 + ["a2"] * 4 + ["b"] * 4 + ["c"] * 4,
        [f"{c}:z={z}" for c in ("a", "a2", "b", "c") for z in range(4)],
    )
    keys = {"a": "K1", "a2": "K1", "b": "K2", "c": "K3"}
    for seed in range(6):
        train, held, rec = ft.holdout_split(data, 0.34, seed, keys=keys)
        groups_t = {keys[data.case_ids[i]] for i in train}
        groups_h = {keys[data.case_ids[i]] for i in held}
        assert rec["by"] == "case" and not groups_t & groups_h and len(held)
    # one case: a block held out, no training slice within the gap
    one = fake_data(["v"] * 20, [f"v:z={z}" for z in range(20)])
    for seed in range(6):
        train, held, rec = ft.holdout_split(one, 0.2, seed, spacing_mm={"v": 2.5}, gap_mm=10)
        zt = np.array([int(one.slice_ids[i].split("=")[1]) for i in train])
        zh = np.array([int(one.slice_ids[i].split("=")[1]) for i in held])
        assert rec["by"] == "block" and len(zh) == 4 and np.ptp(zh) == 3
        assert np.abs(zt[:, None] - zh[None, :]).min() * 2.5 >= 10
        assert rec["n_dropped"] == 20 - len(zt) - len(zh)
    # too few slices: nothing held out, so no comparison
    few = fake_data(["v"] * 3, [f"v:z={z}" for z in range(3)])
    train, held, rec = ft.holdout_split(few, 0.2, 0)
    assert rec["by"] == "none" and len(held) == 0 and len(train) == 3
    # 2D files: single slices
    flat = fake_data([str(i) for i in range(10)], [str(i) for i in range(10)], by_case=False)
    assert ft.holdout_split(flat, 0.2, 0)[2]["by"] == "slice"


def test_no_comparison_means_no_switch():
    done = {"comparison": None, "stopped": "completed", "epochs_run": 3}
    d = fr.decide_switch(done, only_if_better=False)
    assert not d.switch and not d.compared and "no comparison" in d.compare_text
    cmp = {"old_dice": 0.6, "new_dice": 0.7, "n_slices": 2}
    assert fr.decide_switch({**done, "comparison": cmp}, True).switch
    worse = {**cmp, "new_dice": 0.5}
    assert not fr.decide_switch({**done, "comparison": worse}, True).switch
    assert fr.decide_switch({**done, "comparison": worse}, False).switch
    assert (
        "neither version trained"
        in fr.decide_switch({**done, "comparison": cmp}, True).compare_text
    )


def test_run_state_and_event_texts():
    run = fr.RunState(base="b")
    events = run.feed('{"event": "start", "n_train": 4, "n_val": 0, "device": "cpu"}\nnoise\n{"ev')
    assert [e["event"] for e in events] == ["start"] and run.stdout_buffer == '{"ev'
    assert "none held out" in fr.event_status(events[0]).status
    events = run.feed('ent": "done", "name": "x"}\n')
    assert run.done == {"event": "done", "name": "x"}
    view = fr.event_status(
        {
            "event": "epoch",
            "epoch": 1,
            "epochs": 4,
            "train_loss": 0.5,
            "val_dice": 0.7,
            "seconds_left": 30,
        }
    )
    assert view.progress == 0.25 and "held-out Dice 0.700" in view.status and view.epoch
    run.crashed = True
    assert fr.RunState(base="b", crashed=True).failure_message()[0] == "failed"
    args = fr.worker_arguments("m", ["/d"], epochs=3, lr="1e-4", device="cpu", replay="/d")
    assert "--replay" not in args and args[:3] == ["--base", "m", "--stdin-control"]
    assert fr.parse_lr("x") is None and fr.parse_lr("2") is None and fr.parse_lr("1e-4") == 1e-4
    assert fr.parse_lr("auto") == 0.0
    auto = fr.worker_arguments("m", ["/d"], epochs=3, lr="auto", device="cpu")
    assert "--lr" not in auto


def test_finetune_adapts_bn_only_with_enough_slices_holds_out_and_compares(tmp_path):
    """BatchNorm statistics: the base's below 5 corrected slices, adapted from 5 on."""
    from napari_covid_seg.inference.preprocess import default_preprocessing
    from napari_covid_seg.models.checkpoint import load_model_version, save_model_version
    from napari_covid_seg.models.store import ModelStore

    pre = default_preprocessing()
    pre["input_size"] = 64
    base = save_model_version(tmp_path / "base", tiny_model(), preprocessing=pre, name="tb")
    image, truth = make_phantom(shape=(12, 64, 64), spacing=(2.5, 5.0, 5.0), seed=0)
    export_case(tmp_path / "d", image, truth.data, case_id="p", reviewed_slices=range(12))
    store = ModelStore(tmp_path / "store")
    kw = {
        "lr": 1e-3,
        "device": "cpu",
        "store": store,
        "return_result": True,
        "config": ft.TrainConfig(**{**ft.FINETUNE_DEFAULTS, "amp": "off", "batch_size": 4}),
    }
    result = ft.finetune(base, [tmp_path / "d"], epochs=2, out_dir=tmp_path / "run", **kw)
    child = load_model_version(result.info.path, device="cpu").model
    parent = load_model_version(base, device="cpu").model

    def same_bn_stats(model: torch.nn.Module) -> bool:
        mine, base_bn = dict(model.named_buffers()), dict(parent.named_buffers())
        return all(torch.equal(mine[k], base_bn[k]) for k in base_bn if "running" in k)

    assert not same_bn_stats(child)  # 12 corrected slices: the statistics adapt
    assert any(
        not torch.equal(a, b) for a, b in zip(child.parameters(), parent.parameters(), strict=True)
    )
    cmp = result.comparison
    assert cmp is not None and cmp["n_slices"] >= 1
    assert all(v.startswith("p:z=") for v in cmp["val_ids"])
    assert result.best_epoch == result.epochs_run == 2  # fixed recipe: the last epoch
    # three corrected slices: nothing held out could show harm, so the base's statistics stay
    export_case(tmp_path / "few", image, truth.data, case_id="q", reviewed_slices=range(3))
    kw["epochs"] = 1
    few = ft.finetune(base, [tmp_path / "few"], out_dir=tmp_path / "run2", **kw)
    assert same_bn_stats(load_model_version(few.info.path, device="cpu").model)
    # and --freeze-bn keeps them whatever the number of slices
    kept = ft.finetune(base, [tmp_path / "d"], out_dir=tmp_path / "run3", freeze_bn=True, **kw)
    assert same_bn_stats(load_model_version(kept.info.path, device="cpu").model)
    with pytest.raises(ValueError, match="freeze_bn"):
        ft.resolve_policy(freeze_bn="sometimes")


def test_a_click_model_fine_tunes_and_stays_a_click_model(tmp_path):
    """Fine-tuning a click model on corrections trains it (zero guidance, the automatic
    case) and the new version keeps its guidance channels: it still takes clicks."""
    from napari_covid_seg.correction.clicks import ClickSegmenter
    from napari_covid_seg.inference.preprocess import default_preprocessing
    from napari_covid_seg.models.checkpoint import load_model_version, save_model_version
    from napari_covid_seg.models.guidance import add_guidance_channels, click_preprocessing
    from napari_covid_seg.models.store import ModelStore

    pre = default_preprocessing()
    pre["input_size"] = 64
    click = add_guidance_channels(tiny_model())
    base = save_model_version(
        tmp_path / "base", click, preprocessing=click_preprocessing(pre), name="tc"
    )
    image, truth = make_phantom(shape=(12, 64, 64), spacing=(2.5, 5.0, 5.0), seed=0)
    export_case(tmp_path / "d", image, truth.data, case_id="p", reviewed_slices=range(12))
    result = ft.finetune(
        base,
        [tmp_path / "d"],
        epochs=2,
        lr=1e-3,
        device="cpu",
        store=ModelStore(tmp_path / "store"),
        out_dir=tmp_path / "run",
        return_result=True,
        config=ft.TrainConfig(**{**ft.FINETUNE_DEFAULTS, "amp": "off", "batch_size": 4}),
    )
    child = load_model_version(result.info.path, device="cpu")
    assert child.preprocessing["n_channels"] == 6
    assert child.preprocessing["guidance"]["channels"] == ["positive", "negative", "mask"]
    parent = load_model_version(base, device="cpu").model
    assert any(
        not torch.equal(a, b)
        for a, b in zip(child.model.parameters(), parent.parameters(), strict=True)
    )
    assert result.comparison is not None  # compared on held-out slices with zero guidance
    seg = ClickSegmenter(child, device="cpu", precision="fp32")
    out = seg.fix_slice(image.data[6].astype(np.float32), None, [(32, 32)], [])
    assert out.shape == (64, 64) and out[32, 32]  # a positive click holds
