"""Model versions: safetensors + model.json, bit-exact round trips, safe legacy loading."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import napari_covid_seg
from napari_covid_seg.errors import ModelLoadError
from napari_covid_seg.models import build_model, default_preprocessing
from napari_covid_seg.models.checkpoint import (
    ModelExistsError,
    load_model_version,
    save_model_version,
)
from napari_covid_seg.models.metadata import FORMAT

TINY = {"encoder_channels": (4, 8, 8, 16, 16), "decoder_channels": (16, 8, 8, 4, 4)}


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Non-default weights and BatchNorm buffers (one train-mode forward + noise)."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        model(torch.rand(2, model.config.in_channels, 64, 64))
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def test_round_trip_is_bit_exact_for_res_att_unet(tmp_path: Path) -> None:
    model = trained_like(build_model("res_att_unet"))
    folder = save_model_version(
        tmp_path / "v1",
        model,
        metrics={"val_dice": torch.tensor(0.8125), "loss": float("nan")},
        provenance={"parent": "default", "epochs": 3, "data_fingerprint": "abc123"},
        name="my-model",
        description="unit test",
    )
    assert folder == tmp_path / "v1"
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]  # no temp folders left behind

    mv = load_model_version(folder)
    assert_same_state(model, mv.model)
    assert not mv.model.training
    assert mv.config == model.config and mv.name == "my-model"
    assert mv.metrics == {"val_dice": 0.8125, "loss": None}
    assert mv.preprocessing == default_preprocessing()
    assert mv.provenance["parent"] == "default" and mv.provenance["epochs"] == 3
    assert mv.provenance["code_version"] == napari_covid_seg.__version__
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), mv.model(x))


def test_model_json_contents(tmp_path: Path) -> None:
    import datetime

    import numpy as np

    model = build_model("attention_unet", **TINY)
    save_model_version(
        tmp_path / "m",
        model,
        version="1.2.0",
        license="CC-BY-NC-4.0",
        metrics={"val_dice": np.float32(0.5), "per_slice": np.array([0.25, 0.75])},
        provenance={"date": datetime.datetime(2025, 1, 2, 3, 4, 5), "data": tmp_path},
    )
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["format"] == FORMAT == "napari-covid-seg-model/1"
    assert meta["name"] == "m" and meta["version"] == "1.2.0"
    assert meta["architecture"] == model.config.to_dict()
    assert meta["preprocessing"]["window"] == [-1350.0, 150.0]
    assert set(meta["provenance"]) >= {
        "parent",
        "data_fingerprint",
        "epochs",
        "date",
        "code_version",
    }
    assert meta["license"] == "CC-BY-NC-4.0"
    assert meta["metrics"] == {"val_dice": 0.5, "per_slice": [0.25, 0.75]}
    assert meta["provenance"]["date"] == meta["created"] == "2025-01-02T03:04:05"
    assert meta["provenance"]["data"] == str(tmp_path)
    assert meta["weights"]["bytes"] == (tmp_path / "m" / "model.safetensors").stat().st_size
    assert len(meta["weights"]["sha256"]) == 64


def test_float16_weights_load_into_float32_model(tmp_path: Path) -> None:
    model = trained_like(build_model("unet"))
    save_model_version(tmp_path / "half", model, dtype="float16")
    full = tmp_path / "full"
    save_model_version(full, model)
    half_size = (tmp_path / "half" / "model.safetensors").stat().st_size
    assert half_size < 0.6 * (full / "model.safetensors").stat().st_size
    mv = load_model_version(tmp_path / "half" / "model.json")
    state, original = mv.model.state_dict(), model.state_dict()
    for key, value in state.items():
        assert value.dtype == original[key].dtype, key
        if value.is_floating_point():
            torch.testing.assert_close(value, original[key].half().float(), rtol=0, atol=0)
        else:
            assert torch.equal(value, original[key]), key


def test_existing_folder_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    a = trained_like(build_model("unet", **TINY))
    b = build_model("unet", **TINY)
    save_model_version(tmp_path / "v", a)
    with pytest.raises(ModelExistsError, match="already exists"):
        save_model_version(tmp_path / "v", b)
    assert_same_state(load_model_version(tmp_path / "v").model, a)
    save_model_version(tmp_path / "v", b, overwrite=True)
    assert_same_state(load_model_version(tmp_path / "v").model, b)
    assert [p.name for p in tmp_path.iterdir()] == ["v"]


def test_truncated_safetensors_raises_model_load_error(tmp_path: Path) -> None:
    model = build_model("unet", **TINY)
    folder = save_model_version(tmp_path / "v", model)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model_version(folder)
    # also without model.json's size check: the bare file is unreadable
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_model_version(bare, config="unet")


def test_corrupted_weights_detected_by_checksum(tmp_path: Path) -> None:
    folder = save_model_version(tmp_path / "v", build_model("unet", **TINY))
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load_model_version(folder)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "other/2", "architecture": {}}', "expected 'napari-covid-seg-model/1'"),
        ('{"format": "napari-covid-seg-model/1"}', "lacks the 'architecture'"),
        (
            '{"format": "napari-covid-seg-model/1", "architecture": {"name": "vit"}}',
            "invalid architecture",
        ),
    ],
)
def test_bad_model_json_raises(tmp_path: Path, text: str, match: str) -> None:
    folder = save_model_version(tmp_path / "v", build_model("unet", **TINY))
    (folder / "model.json").write_text(text)
    with pytest.raises(ModelLoadError, match=match):
        load_model_version(folder)


def test_missing_paths_and_mismatched_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="No model at"):
        load_model_version(tmp_path / "nothing")
    folder = save_model_version(tmp_path / "v", build_model("unet", **TINY))
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_model_version(folder)
    wrong = tmp_path / "wrong.safetensors"
    save_file(
        {k: v.contiguous() for k, v in build_model("unet", **TINY).state_dict().items()},
        str(wrong),
    )
    with pytest.raises(ModelLoadError, match="do not fit the attention_unet architecture"):
        load_model_version(wrong, config={"name": "attention_unet", **TINY})
    with pytest.raises(ModelLoadError, match="no architecture"):
        load_model_version(wrong)


def test_legacy_state_dict_with_sidecar_or_argument(tmp_path: Path) -> None:
    model = trained_like(build_model("attention_unet", **TINY))
    legacy = tmp_path / "best.pt"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 7}, legacy)
    with pytest.raises(ModelLoadError, match=r"best\.json"):
        load_model_version(legacy)
    mv = load_model_version(legacy, config=model.config)
    assert_same_state(model, mv.model)
    assert mv.name == "best"
    (tmp_path / "best.json").write_text(json.dumps(model.config.to_dict()))
    assert_same_state(model, load_model_version(legacy).model)
    # DataParallel / torch.compile prefixes are stripped
    prefixed = tmp_path / "compiled.pth"
    torch.save({"_orig_mod." + k: v for k, v in model.state_dict().items()}, prefixed)
    assert_same_state(model, load_model_version(prefixed, config=model.config).model)


class _Payload:
    """Unpickling this runs code that creates ``marker`` (a stand-in for malware)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    # the payload is real: plain pickle would run it
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()

    marker = tmp_path / "marker"
    zipped = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Payload(marker)}, zipped)
    raw = tmp_path / "evil.pth"
    raw.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    for path in (zipped, raw):
        with pytest.raises(ModelLoadError, match="refuses to unpickle"):
            load_model_version(path, config="unet")
        assert not marker.exists()
    # the same safety applies to encoder weight files
    with pytest.raises(ModelLoadError, match="refuses to unpickle"):
        build_model("res_unet", encoder_weights=str(zipped))
    assert not marker.exists()


def test_unsupported_suffix_and_device(tmp_path: Path) -> None:
    other = tmp_path / "weights.onnx"
    other.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unsupported model file"):
        load_model_version(other)
    folder = save_model_version(tmp_path / "v", build_model("unet", **TINY))
    from napari_covid_seg.errors import DeviceError

    with pytest.raises(DeviceError):
        load_model_version(folder, device="no-such-device")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            load_model_version(folder, device="cuda")


def test_save_is_atomic_when_writing_fails(tmp_path: Path, monkeypatch) -> None:
    import napari_covid_seg.models.checkpoint as ckpt

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "write_json_atomic", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model_version(tmp_path / "v", build_model("unet", **TINY))
    assert os.listdir(tmp_path) == []
