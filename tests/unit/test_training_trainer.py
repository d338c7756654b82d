"""The Trainer: overfitting, resume, cancel, DDP (world size 1, gloo), fine-tuning, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_covid_seg.errors import CancelledError, DatasetError
from napari_covid_seg.training.config import TrainConfig
from napari_covid_seg.training.datasets import SliceDataset

torch = pytest.importorskip("torch")

from napari_covid_seg.models.checkpoint import load_model_version  # noqa: E402
from napari_covid_seg.models.store import ModelStore  # noqa: E402
from napari_covid_seg.training.trainer import Trainer  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core CI box, OpenMP spin-waits of 2 threads
    under oversubscription make tiny models 10-50x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = {"encoder_channels": [8, 16, 16, 32, 32], "decoder_channels": [32, 16, 16, 8, 8]}


def synthetic_slices(n: int = 16, size: int = 64, seed: int = 0) -> SliceDataset:
    """Textured background with 1-2 bright elliptic 'lesions' per slice, masks = lesions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, masks = [], []
    for _ in range(n):
        img = 0.25 + 0.08 * rng.standard_normal((size, size))
        m = np.zeros((size, size), bool)
        for _ in range(rng.integers(1, 3)):
            cy, cx = rng.uniform(0.2, 0.8, 2)
            ry, rx = rng.uniform(0.07, 0.18, 2)
            m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img[m] += 0.4
        images.append(np.clip(img, 0, 1))
        masks.append(m)
    ids = [str(i) for i in range(n)]
    return SliceDataset(
        images=np.stack(images).astype(np.float16),
        masks=np.stack(masks).astype(np.uint8),
        case_ids=ids,
        slice_ids=ids,
        by_case=False,
        sources=[{"path": "synthetic", "layout": "memory", "fingerprint": f"seed{seed}"}],
    )


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        name="tiny",
        model="unet",
        model_kwargs=TINY,
        input_size=64,
        epochs=2,
        batch_size=4,
        optimizer="adamw",
        lr=3e-3,
        scheduler="cosine",
        loss="dice_bce",
        val_fraction=0.25,
        amp="off",
        seed=0,
        checkpoint_every=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_overfits_synthetic_slices_to_high_dice(tmp_path):
    data = synthetic_slices(16)
    cfg = tiny_config(epochs=30, val_fraction=0.0, loss="bce", scheduler="none")
    # validate on the training slices themselves: this is an overfitting test
    split = (np.arange(16), np.arange(16), {"by": "none"})
    events = []
    res = Trainer(
        cfg,
        out_dir=tmp_path / "run",
        data=data,
        split=split,
        register=False,
        progress=events.append,
    ).fit()
    assert res.stopped == "completed" and res.epochs_run == 30
    assert res.best_metrics["val_dice"] > 0.85, res.best_metrics
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"] * 0.5
    kinds = {e["event"] for e in events}
    assert {"start", "batch", "epoch", "end"} <= kinds
    ep = [e for e in events if e["event"] == "epoch"][-1]
    assert ep["seconds_left"] == 0.0 and ep["n_epochs"] == 30
    out = tmp_path / "run"
    for f in ("metrics.csv", "curves.png", "result.json", "config.yaml", "best/model.json"):
        assert (out / f).is_file(), f
    lines = (out / "metrics.csv").read_text().splitlines()
    assert len(lines) == 31 and "val_dice" in lines[0] and "val_specificity_mean" in lines[0]
    result = json.loads((out / "result.json").read_text())
    assert result["best_epoch"] == res.best_epoch and result["split"]["by"] == "none"
    mv = load_model_version(out / "best")
    assert mv.metrics["val_dice"] == pytest.approx(res.best_metrics["val_dice"])
    assert mv.provenance["data_fingerprint"] == data.fingerprint
    assert mv.provenance["epochs"] == res.best_epoch and mv.preprocessing["input_size"] == 64


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_resume_matches_uninterrupted_run(tmp_path):
    data = synthetic_slices(12, size=64, seed=1)
    aug = {"flip_lr": 0.5, "affine": 0.5, "gamma": 0.5, "noise": 0.5}
    cfg = tiny_config(epochs=2, augment=aug, lesion_oversample=0.0)
    full = Trainer(cfg, out_dir=tmp_path / "a", data=data, register=False).fit()
    assert full.epochs_run == 2

    n_epochs = []

    def stop_after_first(_e=n_epochs):
        return len(_e) >= 1

    part = Trainer(
        cfg,
        out_dir=tmp_path / "b",
        data=data,
        register=False,
        progress=lambda e: n_epochs.append(1) if e["event"] == "epoch" else None,
        should_stop=stop_after_first,
    ).fit()
    assert part.stopped == "cancelled" and part.epochs_run == 1
    resumed = Trainer(cfg, out_dir=tmp_path / "b", data=data, register=False, resume=True)
    res = resumed.fit()
    assert res.epochs_run == 2 and len(res.history) == 2
    wa, wb = _weights(tmp_path / "a" / "last"), _weights(tmp_path / "b" / "last")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)
    sa = torch.load(tmp_path / "a" / "last" / "state.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "last" / "state.pt", weights_only=True)
    assert sa["epoch"] == sb["epoch"] == 2
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"]
    for pid, st in sa["optimizer"]["state"].items():
        torch.testing.assert_close(
            st["exp_avg"], sb["optimizer"]["state"][pid]["exp_avg"], rtol=1e-5, atol=1e-7
        )
    assert sa["history"][1]["train_loss"] == pytest.approx(sb["history"][1]["train_loss"], rel=1e-5)


def test_cancel_keeps_best_version_and_registers_it(tmp_path):
    store = ModelStore(root=tmp_path / "store")
    epochs_done = []
    res = Trainer(
        tiny_config(epochs=20, name="cancelled"),
        out_dir=tmp_path / "run",
        data=synthetic_slices(8),
        store=store,
        progress=lambda e: epochs_done.append(e) if e["event"] == "epoch" else None,
        should_stop=lambda: len(epochs_done) >= 2,
    ).fit()
    assert res.stopped == "cancelled" and res.epochs_run == 2
    assert res.info is not None and res.info.name == "cancelled"
    assert res.best_epoch in (1, 2)
    mv = load_model_version(res.info.path)
    assert mv.metrics["best_epoch"] == res.best_epoch
    assert [i.name for i in store.list() if not i.bundled] == ["cancelled"]
    # stopping before the first epoch ends: an error, and nothing is registered
    with pytest.raises(CancelledError, match="no model was saved"):
        Trainer(
            tiny_config(name="never"),
            out_dir=tmp_path / "run2",
            data=synthetic_slices(8),
            store=store,
            should_stop=lambda: True,
        ).fit()
    assert "never" not in store.names()


def test_ddp_world_size_one_with_gloo(tmp_path):
    import torch.distributed as dist

    from napari_covid_seg.training import ddp

    info = ddp.init_process_group("gloo", rank=0, world_size=1)
    try:
        trainer = Trainer(
            tiny_config(epochs=1),
            out_dir=tmp_path / "run",
            data=synthetic_slices(8),
            register=False,
        )
        res = trainer.fit()
        assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
        assert info.world_size == 1 and res.epochs_run == 1
        assert json.loads(res.result_json.read_text())["world_size"] == 1
        assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    finally:
        dist.destroy_process_group()


def test_bad_datasets_and_configs_give_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="No dataset folder"):
        Trainer(tiny_config(), out_dir=tmp_path / "r").fit()
    with pytest.raises(DatasetError, match="does not exist"):
        Trainer(tiny_config(data=(str(tmp_path / "nope"),)), out_dir=tmp_path / "r").fit()
    with pytest.raises(DatasetError, match="input_size"):
        Trainer(tiny_config(input_size=96), out_dir=tmp_path / "r", data=synthetic_slices(4)).fit()
    with pytest.raises(ValueError, match="Unknown augment"):
        tiny_config(augment={"flip": 0.5})
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny_config(input_size=100)


def _slice_folder(root: Path, n: int, seed: int) -> Path:
    from PIL import Image

    d = synthetic_slices(n, seed=seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray((d.images[i].astype(np.float32) * 255).astype(np.uint8)).save(
            root / "images" / f"{i}.png"
        )
        Image.fromarray(d.masks[i] * 255).save(root / "masks" / f"{i}.png")
    return root


def test_finetune_registers_child_with_parent(tmp_path, monkeypatch):
    from napari_covid_seg.training.finetune import finetune

    monkeypatch.setenv("NAPARI_COVID_SEG_HOME", str(tmp_path / "home"))
    store = ModelStore()
    old = _slice_folder(tmp_path / "old", 8, seed=2)
    new = _slice_folder(tmp_path / "new", 6, seed=3)
    base = Trainer(
        tiny_config(epochs=1, name="base", data=(str(old),)),
        out_dir=tmp_path / "base_run",
        store=store,
    ).fit()
    assert base.info.name == "base"
    events = []
    res = finetune(
        "base",
        [new],
        epochs=2,
        replay_dirs=[old],
        replay_fraction=0.5,
        out_dir=tmp_path / "ft_run",
        device="cpu",
        progress=events.append,
        return_result=True,
        config=tiny_config(lr=3e-5, epochs=5),
    )
    info = res.info
    assert info.parent == "base" and info.name == "base-ft"
    assert res.epochs_run == 2
    mv = load_model_version(info.path)
    assert mv.provenance["parent"] == "base"
    assert mv.provenance["finetune"]["n_replay"] >= 1
    assert mv.provenance["config"]["lr"] == pytest.approx(3e-5)
    assert {i.name for i in store.list()} >= {"base", "base-ft"}
    result = json.loads(res.result_json.read_text())
    assert result["split"]["n_replay"] >= 1
    assert all(not v.startswith("replay/") for v in result["split"]["val_ids"])
    assert any(e["event"] == "epoch" for e in events)


def test_cli_train_evaluate_and_errors(tmp_path, monkeypatch, capsys):
    import yaml

    from napari_covid_seg.cli import main

    monkeypatch.setenv("NAPARI_COVID_SEG_HOME", str(tmp_path / "home"))
    data = _slice_folder(tmp_path / "d", 8, seed=4)
    cfg = tiny_config(epochs=1, name="cli-model").to_dict()
    cfg["data"] = [str(data)]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "model version" in out
    assert "cli-model" in ModelStore().names()
    assert (
        main(["evaluate", "--model", "cli-model", "--data", str(data), "--json", "--device", "cpu"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["n_slices"] == 8 and 0.0 <= result["dice"] <= 1.0
    assert result["resolution"] == "native"
    assert main(["evaluate", "--model", "no-such-model", "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "Unknown model 'no-such-model'" in err and err.count("\n") == 1
    assert main(["train", "--config", str(path), "--data", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 1


def test_time_budget_and_progressive_resizing(tmp_path):
    cfg = tiny_config(epochs=50, low_res_size=32, low_res_fraction=0.5, time_budget_minutes=1e-4)
    res = Trainer(cfg, out_dir=tmp_path / "r", data=synthetic_slices(8), register=False).fit()
    assert res.stopped == "time_budget" and res.epochs_run == 1
    assert res.history[0]["train_size"] == 32  # first half of the run at low resolution
    assert res.history[0]["val_slices"] == 2  # validation at full size
    cfg = tiny_config(epochs=2, low_res_size=32, low_res_fraction=0.5)
    res = Trainer(cfg, out_dir=tmp_path / "r2", data=synthetic_slices(8), register=False).fit()
    assert [h["train_size"] for h in res.history] == [32, 64]
    with pytest.raises(ValueError, match="low_res_size"):
        tiny_config(low_res_size=48)


def test_compare_writes_table_for_identical_settings(tmp_path):
    from napari_covid_seg.training.compare import run_comparison

    data = _slice_folder(tmp_path / "d", 8, seed=5)
    cfg = tiny_config(epochs=1, data=(str(data),))
    rows = run_comparison(cfg, tmp_path / "cmp", models=["unet", "attention_unet"])
    assert [r["method"] for r in rows] == ["Unet", "Attention-Unet"]
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| Method | Acc | Pc | Sen | Sp | F1 |" in md and "Attention-Unet" in md
    csv_lines = (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("model,method,val_accuracy")
    both = [
        json.loads((tmp_path / "cmp" / m / "result.json").read_text())
        for m in ("unet", "attention_unet")
    ]
    assert both[0]["split"] == both[1]["split"]  # same validation slices
    assert rows[0]["params"] < rows[1]["params"]  # gates add parameters
    # a finished model is not retrained
    again = run_comparison(cfg, tmp_path / "cmp", models=["unet"])
    assert again[0]["seconds"] == rows[0]["seconds"]
