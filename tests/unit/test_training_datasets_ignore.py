"""The nnU-Net loader honours the ignore label of dataset.json (no export needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from napari_covid_seg.io import write_mask, write_volume
from napari_covid_seg.io.phantom import make_phantom
from napari_covid_seg.training.datasets import load_nnunet_dataset


def test_slices_with_ignore_voxels_are_not_trained_on(tmp_path):
    image, truth = make_phantom(shape=(6, 32, 32), spacing=(2.5, 5.0, 5.0), seed=0)
    root = tmp_path / "Dataset001"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    axis = image.reorientation.axial_axis
    lab = np.moveaxis(truth.data.copy(), axis, 0)
    lab[[0, 3, 4, 5]] = 2  # unreviewed: ignore
    lab[2, 0, 0] = 2  # one ignore voxel: the slice is not trained on either
    write_volume(root / "imagesTr" / "c_0000.nii.gz", image.data, image)
    write_mask(root / "labelsTr" / "c.nii.gz", np.moveaxis(lab, 0, axis), image)
    labels = {"background": 0, "lesion": 1, "ignore": 2}
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": labels, "file_ending": ".nii.gz"})
    )
    data = load_nnunet_dataset(root, input_size=32)
    assert data.slice_ids == ["c:z=1"]
    assert set(np.unique(data.masks)) <= {0, 1}
    # without the ignore entry, label 2 is not binary: a clear error, never a lesion
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1}}))
    with pytest.raises(Exception, match="not binary"):
        load_nnunet_dataset(root, input_size=32)
