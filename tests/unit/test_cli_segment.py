"""``napari-covid-seg segment``: outputs with the input geometry, exit codes, folders, sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_covid_seg import cli
from napari_covid_seg._commands import segment as segment_cmd
from napari_covid_seg.inference.engine import segment
from napari_covid_seg.io import read_volume, write_volume
from napari_covid_seg.io.phantom import make_phantom
from napari_covid_seg.models import build_model
from napari_covid_seg.models.checkpoint import save_model_version

PP = {
    "input_size": 64,
    "window": [-1350.0, 150.0],
    "channels": "replicate",
    "n_channels": 3,
    "threshold": 0.5,
    "orientation": "SPL",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(
        "attention_unet", encoder_channels=(4, 8, 8, 8, 8), decoder_channels=(8, 8, 8, 8, 8)
    )
    folder = tmp_path_factory.mktemp("models") / "tiny"
    return save_model_version(folder, model, preprocessing=PP, name="tiny")


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    """Two small CTs (one LPS, one RAS-stored) and a corrupt file."""
    d = tmp_path_factory.mktemp("cases")
    img, _ = make_phantom(shape=(8, 64, 64), seed=0)
    write_volume(d / "a.nii.gz", img.data, like=img)
    ras_affine = img.affine @ np.diag([-1.0, -1.0, 1.0, 1.0])
    ras_affine[:2, 3] = img.affine[:2, 3] - ras_affine[:2, :3] @ [63, 63, 0]
    ras = img.with_data(np.ascontiguousarray(img.data[:, ::-1, ::-1]))
    ras.affine = ras_affine
    write_volume(d / "b.nii", ras.data, like=ras)
    (d / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 this is not a gzip stream")
    return d


def run_cli(*args: str) -> int:
    return cli.main(["segment", *map(str, args), "-q"])


def outputs(folder: Path) -> list[str]:
    """The images written to ``folder`` (not the run's segment_report.csv/json)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("segment_report"))


def test_good_and_corrupt_inputs(cases, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli(
        cases / "a.nii.gz",
        cases / "broken.nii.gz",
        cases / "b.nii",
        "-o",
        out,
        "--model",
        model_dir,
        "--device",
        "cpu",
        "--no-lung-restrict",
        "--threshold",
        "0.45",
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.nii.gz" in captured.err and "error" in captured.err
    assert "1 of 3 input(s) failed" in captured.err
    assert outputs(out) == ["a_lesions.nii.gz", "b_lesions.nii.gz"]
    report = json.loads((out / "segment_report.json").read_text())
    status = {r["case"]: (r["status"], r["error"]) for r in report["cases"]}
    assert status["a"] == status["b"] == ("ok", None)
    assert status["broken"][0] == "error" and "broken.nii.gz" in status["broken"][1]
    for name, src in (("a", "a.nii.gz"), ("b", "b.nii")):
        image = read_volume(cases / src)
        mask = read_volume(out / f"{name}_lesions.nii.gz")
        assert mask.is_mask and mask.data.dtype == np.uint8
        np.testing.assert_array_equal(mask.affine, image.affine)
        assert mask.data.shape == image.data.shape
        # the file holds exactly what the engine predicts for that image
        ref = segment(image, str(model_dir), device="cpu", threshold=0.45, restrict_to_lungs=False)
        np.testing.assert_array_equal(mask.data, ref.mask)
    lines = [ln for ln in captured.out.splitlines() if ln.strip()]
    assert len(lines) == 2 and all("mL" in ln and " s on cpu" in ln for ln in lines)


class GGOStandIn(torch.nn.Module):
    """Logit > 0 where the lung-windowed intensity is ground-glass (HU -720..-380)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = (-720 + 1350) / 1500, (-380 + 1350) / 1500
        v = x[:, :1]
        return 400 * torch.minimum(v - lo, hi - v)


def test_same_patient_in_two_orientations_gives_the_same_world_mask(cases, tmp_path, monkeypatch):
    from napari_covid_seg.inference import engine

    asked = {}

    def stand_in_predictor(model, **kw):
        if isinstance(model, engine.Predictor):
            return model
        asked.update(kw, model=model)
        return engine.Predictor(GGOStandIn(), {"input_size": None}, device=kw["device"])

    monkeypatch.setattr(engine, "load_predictor", stand_in_predictor)
    out = tmp_path / "o"
    assert run_cli(cases / "a.nii.gz", cases / "b.nii", "-o", out, "--device", "cpu") == 0
    assert asked["model"] == "default" and asked["device"] == "cpu"
    a = read_volume(out / "a_lesions.nii.gz").data
    b = read_volume(out / "b_lesions.nii.gz").data
    _, truth = make_phantom(shape=(8, 64, 64), seed=0)
    ggo = truth.extra["lesion_types"] == 1
    assert a.sum() > 0 and 2 * (a & ggo).sum() / (a.sum() + ggo.sum()) > 0.9
    np.testing.assert_array_equal(a, b[:, ::-1, ::-1])  # b is stored flipped in y and x


def test_folder_input_and_probabilities(cases, model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for src in ("a.nii.gz", "b.nii"):
        (folder / src).write_bytes((cases / src).read_bytes())
    (folder / "a_lesions.nii.gz").write_bytes((cases / "a.nii.gz").read_bytes())
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert run_cli(folder, "-o", out, "--model", model_dir, "--save-probabilities") == 0
    names = outputs(out)
    assert names == [
        "a_lesion_prob.nii.gz",
        "a_lesions.nii.gz",
        "b_lesion_prob.nii.gz",
        "b_lesions.nii.gz",
    ]
    err = capsys.readouterr().err
    assert "skipping a_lesions.nii.gz" in err
    assert "device auto picked cpu" in err
    prob = read_volume(out / "a_lesion_prob.nii.gz", as_mask=False)
    assert prob.data.dtype == np.uint8 and prob.data.max() > 0


def test_sample_writes_ct_and_mask(model_dir, tmp_path, capsys):
    out = tmp_path / "s"
    assert run_cli("--sample", "-o", out, "--model", model_dir) == 0
    ct = read_volume(out / "sample_ct.nii.gz")
    mask = read_volume(out / "sample_ct_lesions.nii.gz")
    np.testing.assert_array_equal(ct.affine, mask.affine)
    assert ct.data.shape == mask.data.shape == (48, 256, 256)
    phantom, _ = make_phantom()
    np.testing.assert_array_equal(ct.data, phantom.data)
    assert capsys.readouterr().out.startswith("sample_ct: lesions")


def test_without_a_bundled_model_says_so(tmp_path, monkeypatch, capsys):
    from napari_covid_seg.models import store

    monkeypatch.setattr(store, "bundled_models_dir", lambda: tmp_path / "no-bundled-models")
    code = run_cli("--sample", "-o", tmp_path / "out")
    assert code == 1
    err = capsys.readouterr().err
    assert "No bundled default model" in err and "--model" in err
    assert not (tmp_path / "out").exists()


def test_cuda_without_cuda_is_a_clear_error(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = run_cli("--sample", "-o", tmp_path / "out", "--model", model_dir, "--device", "cuda")
    assert code == 1
    assert "CUDA was requested" in capsys.readouterr().err


def test_no_inputs_and_bad_options(tmp_path, capsys):
    assert run_cli("-o", tmp_path / "out") == 1
    assert "--sample" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli("--sample", "-o", tmp_path, "--threshold", "1.5")
    with pytest.raises(SystemExit):
        run_cli("--sample", "-o", tmp_path, "--batch-size", "0")


def test_interrupt_leaves_nothing_half_written(cases, model_dir, tmp_path, monkeypatch):
    def interrupt(self, done, total):
        if done > 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(segment_cmd._Bar, "update_to", interrupt)
    out = tmp_path / "out"
    code = run_cli(cases / "a.nii.gz", "-o", out, "--model", model_dir, "--batch-size", "2")
    assert code == 130
    assert list(out.iterdir()) == []


def test_a_skipped_lung_restriction_is_said_on_the_summary_line(tmp_path, capsys):
    """A lung mask that finds no lungs: the CLI line says the restriction was skipped, and why."""

    # A soft-tissue block without any air: no lungs to find.
    img, _ = make_phantom(shape=(6, 48, 48), seed=1)
    block = img.with_data(np.full(img.data.shape, 40, np.int16))
    write_volume(tmp_path / "block.nii.gz", block.data, like=block)
    model = build_model(
        "attention_unet", encoder_channels=(4, 8, 8, 8, 8), decoder_channels=(8, 8, 8, 8, 8)
    )
    with torch.no_grad():
        model.head.bias.fill_(8.0)  # lesion everywhere
        model.head.weight.zero_()
    folder = save_model_version(tmp_path / "m", model, preprocessing=PP, name="everywhere")
    code = run_cli(tmp_path / "block.nii.gz", "-o", tmp_path / "out", "--model", folder)
    out = capsys.readouterr()
    assert code == 0
    assert "lung restriction skipped" in out.out and "no lungs found" in out.out
    mask = read_volume(tmp_path / "out" / "block_lesions.nii.gz", as_mask=True).data
    assert mask.all()  # nothing was deleted


def test_noisy_scans_get_test_time_flips_by_default_and_the_line_says_so(tmp_path, capsys):
    """`segment` defaults: flips on for a noisy scan, said on the line; `--no-tta`: off."""
    img, _ = make_phantom(shape=(8, 128, 128), spacing=(5.0, 2.2, 2.2), seed=2)
    rng = np.random.default_rng(0)
    noisy = img.with_data(
        np.clip(img.data + rng.normal(0.0, 90.0, img.data.shape), -1024, 3071).astype(np.int16)
    )
    write_volume(tmp_path / "noisy.nii.gz", noisy.data, like=noisy)
    assert run_cli(tmp_path / "noisy.nii.gz", "-o", tmp_path / "a", "--device", "cpu") == 0
    line = capsys.readouterr().out
    assert "test-time flips on (noisy scan: lung noise" in line
    assert run_cli(tmp_path / "noisy.nii.gz", "-o", tmp_path / "b", "--no-tta") == 0
    assert "test-time flips" not in capsys.readouterr().out
    for out, flips in (("a", "on"), ("b", "off")):  # the cohort report says it too
        report = json.loads((tmp_path / out / "segment_report.json").read_text())
        assert report["cases"][0]["test_time_flips"] == flips
    args = cli.build_parser().parse_args(["segment", "x.nii.gz", "-o", "o", "--tta"])
    assert args.tta is True
    assert cli.build_parser().parse_args(["segment", "x.nii.gz", "-o", "o"]).tta is None
