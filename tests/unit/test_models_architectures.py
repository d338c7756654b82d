"""The four architectures: shapes, gradients, determinism, sizes, input checks, config."""

from __future__ import annotations

import json

import pytest
import torch

from napari_covid_seg.errors import InvalidImageError
from napari_covid_seg.models import MODEL_NAMES, ModelConfig, build_model
from napari_covid_seg.models.blocks import AttentionGate
from napari_covid_seg.models.encoders import PlainEncoder, ResNet34Encoder

GATED = {"res_att_unet", "attention_unet"}
RESNET = {"res_att_unet", "res_unet"}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(name) for name in MODEL_NAMES}


def test_model_names() -> None:
    assert MODEL_NAMES == ("res_att_unet", "res_unet", "attention_unet", "unet")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_small(models: dict, name: str) -> None:
    model = models[name].eval()
    with torch.no_grad():
        logits, alphas = model(torch.rand(1, 3, 64, 64), return_attention=True)
    assert logits.shape == (1, 1, 64, 64) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    if name in GATED:
        # coarse (H/16) to fine (H/2), one per gated skip
        assert [tuple(a.shape) for a in alphas] == [(1, 1, 64 // s, 64 // s) for s in (16, 8, 4, 2)]
        assert all(((a > 0) & (a < 1)).all() for a in alphas)
    else:
        assert alphas == []


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_256_batch2(models: dict, name: str) -> None:
    model = models[name].eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 256, 256))
    assert logits.shape == (2, 1, 256, 256)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_backward_gives_finite_gradients_everywhere(models: dict, name: str) -> None:
    model = models[name].train()
    model.zero_grad(set_to_none=True)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        model(torch.rand(2, 3, 64, 64)), target
    )
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_mode_is_deterministic(models: dict, name: str) -> None:
    model = models[name].eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    # and the batch composition does not change a sample's output in eval mode
    with torch.no_grad():
        c = model(torch.cat([x, torch.rand(1, 3, 64, 64)]))[:1]
    torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)


def _gate_params(model: torch.nn.Module) -> int:
    return sum(n_params(m) for m in model.modules() if isinstance(m, AttentionGate))


def test_parameter_counts(models: dict) -> None:
    import torchvision

    resnet = torchvision.models.resnet34()
    resnet_wo_fc = n_params(resnet) - n_params(resnet.fc)
    counts = {name: n_params(m) for name, m in models.items()}
    # the paper-faithful ResAttUnet (decoder 256-128-64-32-16) is about 24.6 M
    assert abs(counts["res_att_unet"] - 24.6e6) <= 0.3e6, counts
    # Res-Unet = smp's Unet(resnet34) (24,436,369) with a 1x1 instead of a 3x3 head
    assert abs(counts["res_unet"] - 24.436e6) <= 0.01e6, counts
    for name in RESNET:
        assert isinstance(models[name].encoder, ResNet34Encoder)
        assert n_params(models[name].encoder) == resnet_wo_fc == 21_284_672
    for name in GATED - RESNET:
        assert isinstance(models[name].encoder, PlainEncoder)
    # the gated and ungated variants differ exactly by the four gates
    assert counts["res_att_unet"] - counts["res_unet"] == _gate_params(models["res_att_unet"])
    assert counts["attention_unet"] - counts["unet"] == _gate_params(models["attention_unet"])
    assert 100_000 < _gate_params(models["res_att_unet"]) < 200_000
    assert 5e6 < counts["unet"] < 10e6, counts


def test_decoder_widths(models: dict) -> None:
    for model in models.values():
        assert [b.conv[1][0].out_channels for b in model.decoder] == [256, 128, 64, 32, 16]
        assert model.head.kernel_size == (1, 1) and model.head.out_channels == 1
        assert sum(b.gate is not None for b in model.decoder) == (
            4 if model.config.name in GATED else 0
        )


def test_wrong_size_message_names_valid_sizes(models: dict) -> None:
    model = models["res_att_unet"].eval()
    with pytest.raises(InvalidImageError) as info:
        model(torch.rand(1, 3, 256, 250))
    message = str(info.value)
    assert "256x250" in message and "256x224 or 256x256" in message
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidImageError, match=r"use 32x32 \(pad or resize\)"):
        model(torch.rand(1, 3, 20, 20))
    with pytest.raises(InvalidImageError, match="480x512 or 512x512"):
        models["unet"](torch.rand(1, 3, 500, 512))


def test_wrong_channels_or_rank_rejected(models: dict) -> None:
    model = models["unet"].eval()
    with pytest.raises(InvalidImageError, match="expects 3 input channel"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(InvalidImageError, match=r"\(N, C, H, W\)"):
        model(torch.rand(3, 64, 64))


def test_one_channel_model() -> None:
    model = build_model("res_unet", in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_small_plain_config_changes_widths() -> None:
    model = build_model("attention_unet", encoder_channels=[8, 8, 16, 16, 32])
    assert model.encoder.out_channels == (8, 8, 16, 16, 32)
    assert model.config.encoder_channels == (8, 8, 16, 16, 32)


def test_config_round_trip_rebuilds_same_architecture() -> None:
    model = build_model("attention_unet", encoder_channels=(8, 8, 16, 16, 32))
    d = json.loads(json.dumps(model.config.to_dict()))
    assert ModelConfig.from_dict(d) == model.config
    rebuilt = build_model(**d)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert model.config.attention and model.config.encoder == "plain"
    assert build_model("res-att-UNet").config.name == "res_att_unet"


def test_bad_configs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="choose one of: res_att_unet"):
        build_model("segformer")
    with pytest.raises(ValueError, match="ImageNet weights exist only"):
        build_model("unet", encoder_weights="imagenet")
    with pytest.raises(ValueError, match="fixed ResNet34 encoder"):
        ModelConfig(name="res_unet", encoder_channels=(1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="5 positive integers"):
        ModelConfig(decoder_channels=(64, 32))
    with pytest.raises(ValueError, match="Unknown architecture keys"):
        ModelConfig.from_dict({"name": "unet", "dropout": 0.5})
    with pytest.raises(ValueError, match="in_channels"):
        ModelConfig(in_channels=0)
