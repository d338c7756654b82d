"""Learning within the open volume: fine-tune on reviewed slices, re-segment the rest,
never touch the protected slices; cancel leaves nothing."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_covid_seg.errors import CancelledError, DatasetError  # noqa: E402
from napari_covid_seg.io.phantom import make_phantom  # noqa: E402
from napari_covid_seg.training.learn_in_volume import (  # noqa: E402
    iter_learn,
    learn_in_volume,
    volume_slices,
)

TINY = {"encoder_channels": [8, 16, 16, 32, 32], "decoder_channels": [32, 16, 16, 8, 8]}


@pytest.fixture
def tiny_version(tmp_path):
    from napari_covid_seg.inference.preprocess import default_preprocessing
    from napari_covid_seg.models import build_model
    from napari_covid_seg.models.checkpoint import load_model_version, save_model_version

    torch.manual_seed(0)
    pre = default_preprocessing()
    pre["input_size"] = 64
    path = save_model_version(tmp_path / "m", build_model("unet", **TINY), preprocessing=pre)
    return load_model_version(path, device="cpu")


def test_learn_keeps_protected_slices_and_replaces_the_rest(tiny_version):
    image, truth = make_phantom(shape=(10, 64, 64), spacing=(2.5, 5.0, 5.0), seed=0)
    axis = image.reorientation.axial_axis
    labels = np.zeros_like(truth.data)
    reviewed = [2, 7]
    for z in reviewed:  # the user corrected these two slices to the truth
        idx = [slice(None)] * 3
        idx[axis] = z
        labels[tuple(idx)] = truth.data[tuple(idx)]
    weights = {k: v.clone() for k, v in tiny_version.model.state_dict().items()}
    events = []
    result = learn_in_volume(
        image,
        labels,
        reviewed,
        tiny_version,
        epochs=2,
        lr=1e-3,
        device="cpu",
        progress=events.append,
        segment_options={"restrict_to_lungs": False, "precision": "fp32"},
    )
    kinds = {e["event"] for e in events}
    assert {"start", "epoch", "segment"} <= kinds
    assert result.labels.shape == labels.shape and result.epochs == 2
    assert result.protected_slices == reviewed and result.n_train == 2
    new_z = np.moveaxis(result.labels, axis, 0)
    old_z = np.moveaxis(labels, axis, 0)
    for z in reviewed:
        assert np.array_equal(new_z[z], old_z[z])
    assert not set(result.changed_slices) & set(reviewed)
    assert set(result.timings) >= {"train", "segment", "total"}
    # the caller's model version is not changed (a copy is trained)
    assert all(torch.equal(v, weights[k]) for k, v in tiny_version.model.state_dict().items())


def test_cancel_and_bad_input(tiny_version):
    image, truth = make_phantom(shape=(6, 64, 64), seed=1)
    with pytest.raises(CancelledError):
        learn_in_volume(
            image, truth.data, [1], tiny_version, device="cpu", should_stop=lambda: True
        )
    with pytest.raises(DatasetError):
        next(iter_learn(image, truth.data[:-1], [1], tiny_version))
    with pytest.raises(DatasetError):
        volume_slices(image, truth.data, [99], input_size=64, roi=None)
    data = volume_slices(image, truth.data, [3, 1], input_size=64, roi=None)
    assert data.slice_ids == ["volume:z=1", "volume:z=3"] and data.images.shape == (2, 64, 64)


def test_learn_command_writes_new_labels_and_keeps_the_listed_slices(tiny_version, tmp_path):
    from napari_covid_seg._commands.train import parse_slices
    from napari_covid_seg.cli import main
    from napari_covid_seg.io import read_volume, write_mask, write_volume

    assert parse_slices("3,5, 8-10") == [3, 5, 8, 9, 10]
    with pytest.raises(ValueError):
        parse_slices("")
    image, truth = make_phantom(shape=(8, 64, 64), spacing=(2.5, 5.0, 5.0), seed=2)
    write_volume(tmp_path / "ct.nii.gz", image.data, image)
    write_mask(tmp_path / "lab.nii.gz", truth.data, image)
    argv = ["learn", str(tmp_path / "ct.nii.gz"), str(tmp_path / "lab.nii.gz")]
    argv += ["--slices", "1,5", "--model", str(tiny_version.path), "--epochs", "1"]
    argv += ["--device", "cpu", "--out", str(tmp_path / "lab.nii.gz")]
    assert main(argv) == 1  # never overwrites its input
    argv[-1] = str(tmp_path / "new.nii.gz")
    assert main(argv) == 0
    new = read_volume(tmp_path / "new.nii.gz", as_mask=True)
    assert np.allclose(new.affine, image.affine) and new.data.shape == truth.data.shape
    axis = image.reorientation.axial_axis
    for z in (1, 5):
        assert np.array_equal(np.take(new.data, z, axis), np.take(truth.data, z, axis))


def test_slices_to_learn_are_reviewed_or_edited():
    from napari_covid_seg.training.learn_in_volume import slices_to_learn

    pred = np.zeros((4, 5, 6), np.uint8)
    labels = pred.copy()
    labels[1, 2, 3] = 1  # edited on axis-0 slice 1 (axis-2 slice 3)
    assert slices_to_learn(labels, pred, [3], 0) == [1, 3]
    assert slices_to_learn(labels, pred, None, 2) == [3]
    assert slices_to_learn(labels, None, [0], 0) == [0]
