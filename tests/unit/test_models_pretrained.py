"""Encoder weights come from local files only: the torch hub cache or a given path."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torchvision

from napari_covid_seg.errors import ModelLoadError
from napari_covid_seg.models import build_model
from napari_covid_seg.models.pretrained import imagenet_weights_path, imagenet_weights_url

TORCHVISION_FILENAME = "resnet34-b627a593.pth"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any attempt to open a connection or resolve a name is recorded and fails."""
    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args[:2]))
        raise OSError("network access is forbidden in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub dir: ``torch.hub.get_dir()`` follows ``$TORCH_HOME``."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # undo any torch.hub.set_dir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub"
    assert Path(torch.hub.get_dir()) == hub
    return hub


def fake_imagenet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return torchvision.models.resnet34().state_dict()


def test_imagenet_path_is_torchvision_cache_file(hub_dir: Path) -> None:
    assert imagenet_weights_url().endswith("/" + TORCHVISION_FILENAME)
    assert imagenet_weights_path() == hub_dir / "checkpoints" / TORCHVISION_FILENAME


def test_imagenet_weights_load_from_hub_cache(hub_dir: Path, no_network: list[str]) -> None:
    state = fake_imagenet_state()
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(state, hub_dir / "checkpoints" / TORCHVISION_FILENAME)
    model = build_model("res_att_unet", encoder_weights="imagenet")
    enc = model.encoder.state_dict()
    assert set(enc) == {k for k in state if not k.startswith("fc.")}
    for key, value in enc.items():
        assert torch.equal(value, state[key]), key
    assert model.config.encoder_weights == "imagenet"
    # the decoder is untouched by encoder weights and the model still runs
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    assert no_network == []


def test_missing_imagenet_weights_fail_fast_without_network(
    hub_dir: Path, no_network: list[str]
) -> None:
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        build_model("res_unet", encoder_weights="imagenet")
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert str(hub_dir / "checkpoints" / TORCHVISION_FILENAME) in message
    assert "https://download.pytorch.org/models/" + TORCHVISION_FILENAME in message
    assert "never downloads" in message
    assert no_network == []
    assert elapsed < 10.0
    assert not (hub_dir / "checkpoints" / TORCHVISION_FILENAME).exists()


def test_imagenet_weights_adapted_to_one_channel(hub_dir: Path) -> None:
    state = fake_imagenet_state()
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(state, hub_dir / "checkpoints" / TORCHVISION_FILENAME)
    model = build_model("res_unet", in_channels=1, encoder_weights="imagenet")
    torch.testing.assert_close(
        model.encoder.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True)
    )
    assert torch.equal(model.encoder.layer4[2].conv2.weight, state["layer4.2.conv2.weight"])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_encoder_weights_from_local_file(tmp_path: Path, suffix: str) -> None:
    state = {k: v for k, v in fake_imagenet_state().items() if not k.startswith("fc.")}
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    model = build_model("res_att_unet", encoder_weights=str(path))
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_encoder_weights_from_a_whole_trained_model(tmp_path: Path) -> None:
    torch.manual_seed(5)
    donor = build_model("res_unet")
    path = tmp_path / "donor.pt"
    torch.save(donor.state_dict(), path)
    model = build_model("res_att_unet", encoder_weights=str(path))
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, donor.encoder.state_dict()[key]), key


def test_bad_encoder_weight_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        build_model("res_unet", encoder_weights=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet18().state_dict(), wrong)
    with pytest.raises(ModelLoadError, match="not a torchvision ResNet34 state dict"):
        build_model("res_unet", encoder_weights=str(wrong))
    with pytest.raises(ValueError, match="ImageNet weights exist only"):
        build_model("attention_unet", encoder_weights=str(wrong))
