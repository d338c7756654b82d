"""The export marks unreviewed slices with nnU-Net's ignore label; our loader and nnU-Net agree.

The nnU-Net check runs nnunetv2's own ``verify_dataset_integrity`` on an
export; it is skipped, with the reason, where nnunetv2 is not installed
(``pip install nnunetv2``: it is not in the testing extra, it pulls in a
large set of packages).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_covid_seg.io import read_volume
from napari_covid_seg.io.dataset_export import IGNORE_LABEL, LABELS, export_case, label_path
from napari_covid_seg.io.phantom import make_phantom


def _export(folder, reviewed=(1, 4, 6), case_id="p0", seed=0):
    image, truth = make_phantom(shape=(8, 48, 48), spacing=(2.5, 5.0, 5.0), seed=seed)
    export_case(folder, image, truth.data, case_id=case_id, reviewed_slices=reviewed)
    return image, truth


def test_unreviewed_slices_are_written_as_ignore(tmp_path):
    image, truth = _export(tmp_path / "d")
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "lesion": 1, "ignore": 2} == LABELS
    lab = read_volume(label_path(tmp_path / "d", "p0"), as_mask=True).data
    axis = image.reorientation.axial_axis
    lab_z = np.moveaxis(lab, axis, 0)
    truth_z = np.moveaxis(truth.data, axis, 0)
    for z in range(lab_z.shape[0]):
        if z in (1, 4, 6):
            assert np.array_equal(lab_z[z], (truth_z[z] != 0).astype(np.uint8))
        else:
            assert (lab_z[z] == IGNORE_LABEL).all()
    # every slice reviewed (None): no ignore voxel at all
    image2, truth2 = make_phantom(shape=(8, 48, 48), seed=3)
    export_case(tmp_path / "d", image2, truth2.data, case_id="all", reviewed_slices=None)
    assert IGNORE_LABEL not in np.unique(read_volume(label_path(tmp_path / "d", "all")).data)


def test_legacy_dataset_is_upgraded_when_appended_to(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "lesion": 1}, "channel_names": {"0": "CT"}})
    )
    _export(root)
    assert json.loads((root / "dataset.json").read_text())["labels"] == LABELS


def test_our_loader_trains_only_on_reviewed_slices_without_reviewed_json(tmp_path):
    torch = pytest.importorskip("torch")  # noqa: F841 (resize_stack needs it)
    from napari_covid_seg.training.datasets import load_nnunet_dataset

    _export(tmp_path / "d")
    with_json = load_nnunet_dataset(tmp_path / "d", input_size=32)
    (tmp_path / "d" / "reviewed.json").unlink()  # nnU-Net never reads it: the labels suffice
    without = load_nnunet_dataset(tmp_path / "d", input_size=32)
    assert with_json.slice_ids == without.slice_ids and len(without) == 3
    assert sorted(int(s.split("z=")[1]) for s in without.slice_ids) == [1, 4, 6]
    assert np.array_equal(with_json.masks, without.masks)
    assert set(np.unique(without.masks)) <= {0, 1}


def test_nnunet_accepts_the_export(tmp_path, monkeypatch):
    pytest.importorskip(
        "nnunetv2", reason="nnunetv2 is not installed (pip install nnunetv2 to run this check)"
    )
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    root = tmp_path / "Dataset501_Covid"
    _export(root, reviewed=(2, 5), case_id="p0", seed=0)
    _export(root, reviewed=(0, 1, 2, 3, 4, 5, 6, 7), case_id="p1", seed=1)
    for env in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(env, str(tmp_path / env))
    verify_dataset_integrity(str(root), num_processes=1)  # raises on any problem


def test_evaluate_scores_only_reviewed_slices_of_an_export(tmp_path):
    """An export's unreviewed slices (ignore label) are neither errors nor scored."""
    import json

    import torch

    from napari_covid_seg.io import write_volume
    from napari_covid_seg.io.phantom import make_phantom
    from napari_covid_seg.training.evaluate import _nnunet_cases, evaluate_cases

    img, truth = make_phantom(shape=(6, 48, 48), seed=2)
    root = tmp_path / "Dataset001_x"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    labels = truth.data.copy()
    labels[3:] = 2  # slices 3..5 not reviewed
    write_volume(root / "imagesTr" / "c1_0000.nii.gz", img.data, like=img)
    write_volume(root / "labelsTr" / "c1.nii.gz", labels, like=img, is_mask=True)
    (root / "dataset.json").write_text(
        json.dumps(
            {"labels": {"background": 0, "lesion": 1, "ignore": 2}, "file_ending": ".nii.gz"}
        )
    )
    cases = _nnunet_cases(root, None, None)
    assert len(cases) == 1 and set(np.unique(cases[0][2])) <= {0, 1, 255}

    class Nothing(torch.nn.Module):
        def forward(self, x):
            return torch.full_like(x[:, :1], -10.0)

    m = evaluate_cases(Nothing(), cases, workdir=tmp_path / "w", uncertainty=False)
    assert m["n_slices"] == 3  # only the reviewed slices 0..2
