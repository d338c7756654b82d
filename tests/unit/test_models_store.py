"""The model store (bundled + user versions) and the ``models`` CLI subcommand."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from napari_covid_seg.errors import ModelLoadError
from napari_covid_seg.models.store import ModelStore, bundled_models_dir, default_store_root

TINY = {"encoder_channels": (4, 8, 8, 16, 16), "decoder_channels": (16, 8, 8, 4, 4)}


def make_version(folder: Path, *, name: str, parent: str | None, dice: float, created: str) -> Path:
    from napari_covid_seg.models import build_model
    from napari_covid_seg.models.checkpoint import save_model_version

    save_model_version(
        folder,
        build_model("attention_unet", **TINY),
        name=name,
        metrics={"val_dice": dice},
        provenance={"parent": parent, "date": created},
    )
    return folder


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NAPARI_COVID_SEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    return {
        "old": make_version(
            src / "old", name="lungs", parent=None, dice=0.7, created="2024-01-01T00:00:00+00:00"
        ),
        "new": make_version(
            src / "new", name="lungs", parent="lungs", dice=0.8, created="2025-06-01T00:00:00+00:00"
        ),
        "bundled": make_version(
            tmp_path / "bundled" / "default",
            name="default",
            parent=None,
            dice=0.75,
            created="2023-01-01T00:00:00+00:00",
        ),
    }


def test_store_root_follows_environment(home: Path) -> None:
    assert default_store_root() == home / "models"
    assert ModelStore().root == home / "models"
    assert bundled_models_dir().parent.name == "napari_covid_seg"


def test_no_bundled_default(home: Path, tmp_path: Path) -> None:
    store = ModelStore(bundled_dir=tmp_path / "no-bundled")
    assert store.list() == []
    with pytest.raises(ModelLoadError) as info:
        store.resolve("default")
    assert str(info.value) == (
        "No bundled default model is installed; train one with "
        "`napari-covid-seg train` or pass --model PATH"
    )
    with pytest.raises(ModelLoadError, match="Unknown model 'nope'; known models: none"):
        store.resolve("nope")


def test_register_list_resolve_remove(home: Path, tmp_path: Path, sources: dict) -> None:
    from napari_covid_seg.models.checkpoint import load_model_version

    store = ModelStore(bundled_dir=tmp_path / "bundled")
    first = store.register(sources["old"])
    second = store.register(sources["new"])  # same name: auto-suffixed
    third = store.register(sources["new"], name="my model/v2")  # sanitised
    assert (first.name, second.name, third.name) == ("lungs", "lungs-2", "my-model-v2")
    assert first.path == home / "models" / "lungs" and not first.bundled
    assert json.loads((second.path / "model.json").read_text())["name"] == "lungs-2"
    assert (sources["new"] / "model.json").is_file()  # the source is copied, not moved

    infos = store.list()
    assert [i.name for i in infos] == ["default", "lungs-2", "my-model-v2", "lungs"]
    assert infos[0].bundled and not any(i.bundled for i in infos[1:])
    assert infos[1].val_dice == pytest.approx(0.8) and infos[1].parent == "lungs"
    assert infos[1].architecture == "attention_unet"
    assert infos[-1].created.startswith("2024-01-01") and infos[-1].version

    assert store.resolve("default") == tmp_path / "bundled" / "default"
    assert store.resolve("lungs-2") == home / "models" / "lungs-2"
    assert store.resolve(str(sources["old"])) == sources["old"]
    assert load_model_version(store.resolve("lungs")).name == "lungs"

    with pytest.raises(ModelLoadError, match="bundled model and cannot be removed"):
        store.remove("default")
    store.remove("lungs")
    assert not (home / "models" / "lungs").exists()
    assert [i.name for i in store.list()] == ["default", "lungs-2", "my-model-v2"]
    with pytest.raises(ModelLoadError, match="No user model named 'lungs'"):
        store.remove("lungs")
    with pytest.raises(ModelLoadError, match="Unknown model 'lungs'"):
        store.resolve("lungs")
    assert sorted(p.name for p in (home / "models").iterdir()) == ["lungs-2", "my-model-v2"]


def test_register_overwrite_and_reserved_names(home: Path, tmp_path: Path, sources: dict) -> None:
    store = ModelStore(bundled_dir=tmp_path / "bundled")
    store.register(sources["old"], name="m")
    info = store.register(sources["new"], name="m", overwrite=True)
    assert info.name == "m" and info.val_dice == pytest.approx(0.8)
    assert [i.name for i in store.list() if not i.bundled] == ["m"]
    # a bundled name is never shadowed, even with overwrite=True
    assert store.register(sources["old"], name="default", overwrite=True).name == "default-2"


def test_register_model_version_and_legacy_file(home: Path, tmp_path: Path, sources: dict) -> None:
    import torch

    from napari_covid_seg.models.checkpoint import load_model_version

    store = ModelStore(bundled_dir=tmp_path / "bundled")
    mv = load_model_version(sources["new"])
    info = store.register(mv, name="from-memory")
    assert info.val_dice == pytest.approx(0.8) and info.parent == "lungs"
    legacy = tmp_path / "legacy.pt"
    torch.save(mv.model.state_dict(), legacy)
    (tmp_path / "legacy.json").write_text(json.dumps(mv.config.to_dict()))
    converted = store.register(legacy)
    assert converted.name == "legacy"
    assert (converted.path / "model.safetensors").is_file()
    reloaded = load_model_version(converted.path).model.state_dict()
    for key, value in mv.model.state_dict().items():
        assert torch.equal(reloaded[key], value), key


def test_register_refuses_broken_versions(home: Path, tmp_path: Path, sources: dict) -> None:
    store = ModelStore(bundled_dir=tmp_path / "bundled")
    weights = sources["old"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="truncated"):
        store.register(sources["old"])
    assert list((home / "models").iterdir()) == []  # nothing half-registered
    with pytest.raises(ModelLoadError, match="No model at"):
        store.register(tmp_path / "missing")


def test_unreadable_user_version_is_listed_with_error(home: Path, tmp_path: Path) -> None:
    broken = home / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "model.json").write_text("{oops")
    infos = ModelStore(bundled_dir=tmp_path / "none").list()
    assert [i.name for i in infos] == ["broken"]
    assert "not valid JSON" in infos[0].error


# -- CLI --------------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    from napari_covid_seg._commands import models as models_cmd

    parser = argparse.ArgumentParser(prog="napari-covid-seg")
    models_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_list_show_remove(home: Path, sources: dict, capsys: pytest.CaptureFixture) -> None:
    ModelStore().register(sources["new"], name="mine")
    assert run_cli("models", "list") == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:3] == ["name", "arch", "version"] and "Dice" in header
    assert "mine" in out and "attention_unet" in out and "0.800" in out and "lungs" in out

    assert run_cli("models") == 0  # bare `models` lists
    assert "mine" in capsys.readouterr().out

    assert run_cli("models", "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["name"] == "mine" and r["val_dice"] == pytest.approx(0.8) for r in rows)

    assert run_cli("models", "show", "mine") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["architecture"]["name"] == "attention_unet" and shown["metrics"]["val_dice"] == 0.8

    assert run_cli("models", "remove", "mine") == 0
    assert "Removed mine" in capsys.readouterr().out
    assert run_cli("models", "remove", "mine") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "No user model named 'mine'" in err
    assert run_cli("models", "show", "nothing-here") == 1
    assert "Unknown model 'nothing-here'" in capsys.readouterr().err


def test_cli_add(home: Path, sources: dict, capsys: pytest.CaptureFixture) -> None:
    assert run_cli("models", "add", str(sources["old"]), "--name", "added") == 0
    assert "Added added" in capsys.readouterr().out
    assert (home / "models" / "added" / "model.json").is_file()
    assert run_cli("models", "add", str(home / "nope")) == 1
    assert "No model at" in capsys.readouterr().err


def test_listing_does_not_import_torch_or_qt(home: Path) -> None:
    code = (
        "import sys\n"
        "import napari_covid_seg.models, napari_covid_seg.models.store\n"
        "import napari_covid_seg._commands.models\n"
        "from napari_covid_seg.models import MODEL_NAMES, ModelConfig\n"
        "from napari_covid_seg.models.store import ModelStore\n"
        "ModelStore().list()\n"
        "ModelConfig(name='res_att_unet').to_dict()\n"
        "bad = [m for m in ('torch', 'torchvision', 'qtpy', 'napari', 'magicgui') "
        "if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "[]"
