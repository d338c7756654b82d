"""Blocks and encoders: attention gate maths, decoder stage, encoder feature pyramids."""

from __future__ import annotations

import pytest
import torch

from napari_covid_seg.models.blocks import AttentionGate, DecoderBlock, DoubleConv
from napari_covid_seg.models.encoders import (
    PlainEncoder,
    ResNet34Encoder,
    adapt_first_conv_weight,
)


def test_attention_gate_output_is_alpha_times_skip() -> None:
    torch.manual_seed(0)
    gate = AttentionGate(gate_channels=12, skip_channels=8).eval()
    g = torch.randn(2, 12, 16, 20)
    x = torch.randn(2, 8, 16, 20)
    with torch.no_grad():
        out, alpha = gate(g, x)
    assert alpha.shape == (2, 1, 16, 20)
    assert out.shape == x.shape
    assert torch.all(alpha > 0) and torch.all(alpha < 1)
    torch.testing.assert_close(out, alpha * x, rtol=0, atol=0)
    # alpha follows the paper's equations: sigmoid(psi(relu(W_g g + W_x x)))
    expected = torch.sigmoid(gate.psi(torch.relu(gate.w_g(g) + gate.w_x(x))))
    torch.testing.assert_close(alpha, expected)
    torch.testing.assert_close(gate.attention(g, x), alpha)


def test_attention_gate_depends_on_gating_signal() -> None:
    torch.manual_seed(0)
    gate = AttentionGate(4, 4).eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        a1 = gate.attention(torch.zeros(1, 4, 8, 8), x)
        a2 = gate.attention(5 * torch.randn(1, 4, 8, 8), x)
    assert not torch.allclose(a1, a2)


def test_attention_gate_rejects_mismatched_sizes() -> None:
    gate = AttentionGate(4, 4)
    with pytest.raises(ValueError, match="does not fit"):
        gate(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 16, 16))


def test_attention_gate_inter_channels_default_half_of_skip() -> None:
    gate = AttentionGate(64, 32)
    assert gate.w_x[0].out_channels == 16
    assert gate.psi.out_channels == 1


@pytest.mark.parametrize("attention", [True, False])
def test_decoder_block_shapes(attention: bool) -> None:
    block = DecoderBlock(in_channels=16, skip_channels=8, out_channels=6, attention=attention)
    y, alpha = block(torch.randn(2, 16, 4, 5), torch.randn(2, 8, 8, 10))
    assert y.shape == (2, 6, 8, 10)
    if attention:
        assert alpha is not None and alpha.shape == (2, 1, 8, 10)
    else:
        assert alpha is None and block.gate is None


def test_decoder_block_without_skip_only_upsamples_and_convolves() -> None:
    block = DecoderBlock(in_channels=8, skip_channels=0, out_channels=4, attention=True)
    assert block.gate is None
    y, alpha = block(torch.randn(1, 8, 3, 3))
    assert y.shape == (1, 4, 6, 6) and alpha is None


def test_double_conv_stride() -> None:
    assert DoubleConv(3, 5, stride=2)(torch.randn(1, 3, 32, 32)).shape == (1, 5, 16, 16)


@pytest.mark.parametrize("kind", ["resnet34", "plain"])
def test_encoder_feature_pyramid(kind: str) -> None:
    encoder = ResNet34Encoder(3) if kind == "resnet34" else PlainEncoder(3, (4, 8, 8, 16, 16))
    feats = encoder(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == list(encoder.out_channels)
    assert [tuple(f.shape[-2:]) for f in feats] == [(64 // s, 96 // s) for s in (2, 4, 8, 16, 32)]


def test_resnet34_encoder_matches_torchvision_without_head() -> None:
    import torchvision

    tv_keys = set(torchvision.models.resnet34().state_dict())
    enc = ResNet34Encoder()
    enc_keys = set(enc.state_dict())
    assert enc_keys == {k for k in tv_keys if not k.startswith("fc.")}
    assert ResNet34Encoder.out_channels == (64, 64, 128, 256, 512)
    assert not hasattr(enc, "fc") and not hasattr(enc, "avgpool")


def test_resnet34_encoder_other_in_channels() -> None:
    enc = ResNet34Encoder(in_channels=1)
    assert enc.conv1.weight.shape == (64, 1, 7, 7)
    assert enc(torch.randn(1, 1, 64, 64))[-1].shape == (1, 512, 2, 2)


def test_adapt_first_conv_weight_preserves_gray_response() -> None:
    torch.manual_seed(0)
    w3 = torch.randn(64, 3, 7, 7)
    gray = torch.rand(1, 1, 32, 32)
    conv = torch.nn.functional.conv2d
    out3 = conv(gray.repeat(1, 3, 1, 1), w3)
    torch.testing.assert_close(conv(gray, adapt_first_conv_weight(w3, 1)), out3)
    torch.testing.assert_close(
        conv(gray.repeat(1, 6, 1, 1), adapt_first_conv_weight(w3, 6)), out3, atol=1e-4, rtol=1e-4
    )
    assert adapt_first_conv_weight(w3, 3) is w3


def test_oktay_gate_computes_on_the_coarse_grid_and_resamples():
    import torch
    import torch.nn.functional as F

    from napari_covid_seg.models.blocks import AttentionGate

    torch.manual_seed(0)
    gate = AttentionGate(8, 4, coarse=True).eval()
    g = torch.randn(2, 8, 5, 6)  # the deeper feature, before upsampling
    x = torch.randn(2, 4, 10, 12)  # the skip, twice the size
    out, alpha = gate(g, x)
    assert out.shape == x.shape and alpha.shape == (2, 1, 10, 12)
    a = gate.w_g(g) + gate.w_x(x)  # both on the 5 x 6 grid
    coarse = torch.sigmoid(gate.psi(F.relu(a)))
    want = F.interpolate(coarse, size=(10, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(alpha, want)
    torch.testing.assert_close(out, x * want)
    with pytest.raises(ValueError, match="does not fit"):
        gate(torch.randn(2, 8, 10, 12), x)  # a same-size gating signal is the paper's variant


def test_res_att_unet_with_the_oktay_gate_round_trips(tmp_path):
    import torch

    from napari_covid_seg.models import build_model
    from napari_covid_seg.models.checkpoint import load_model_version, save_model_version

    model = build_model("res_att_unet", gate="oktay").eval()
    x = torch.rand(1, 3, 64, 64)
    logits, alphas = model(x, return_attention=True)
    assert logits.shape == (1, 1, 64, 64) and len(alphas) == 4
    assert [a.shape[-1] for a in alphas] == [4, 8, 16, 32]
    save_model_version(tmp_path / "m", model)
    back = load_model_version(tmp_path / "m")
    assert back.config.gate == "oktay"
    torch.testing.assert_close(back.model.eval()(x), model(x))
    with pytest.raises(ValueError, match="gate"):
        build_model("res_att_unet", gate="other")
