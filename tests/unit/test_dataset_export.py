"""Export for training: nnU-Net v2 raw layout, exact geometry, appending, updating a case,
no silent overwrite, reviewed slices in the file's own voxel axes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_covid_seg.errors import DatasetError, GeometryMismatchError
from napari_covid_seg.io import read_volume, write_volume
from napari_covid_seg.io.dataset_export import (
    LABELS,
    export_case,
    find_case,
    image_path,
    label_path,
)
from napari_covid_seg.io.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A phantom CT read back from a NIfTI file (so it has a header) and its truth."""
    image, truth = make_phantom(shape=(12, 64, 64), seed=3)
    path = tmp_path_factory.mktemp("src") / "phantom_ct.nii.gz"
    write_volume(path, image.data, image)
    return read_volume(path), truth


def test_export_writes_nnunet_case_with_source_geometry(tmp_path, phantom):
    image, truth = phantom
    mask = truth.data.copy()
    mask[mask > 0] = 2  # any non-zero label is lesion
    case = export_case(
        tmp_path / "Dataset001_Covid",
        image,
        mask,
        case_id="patient_01",
        provenance={"model_version": "tiny", "voxels_added": np.int64(5), "voxels_removed": 3},
    )
    root = tmp_path / "Dataset001_Covid"
    assert case == "patient_01"
    img = nib.load(str(image_path(root, case)))
    lab = nib.load(str(label_path(root, case)))
    np.testing.assert_array_equal(img.affine, image.affine)
    np.testing.assert_array_equal(lab.affine, image.affine)
    assert lab.get_data_dtype() == np.uint8
    assert int(img.header.get_sform(coded=True)[1]) == int(image.header.get_sform(coded=True)[1])
    back = read_volume(label_path(root, case), as_mask=True)
    np.testing.assert_array_equal(back.data, (truth.data > 0).astype(np.uint8))
    back_img = read_volume(image_path(root, case), as_mask=False)
    np.testing.assert_array_equal(back_img.data, image.data)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["numTraining"] == 1
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == LABELS
    assert meta["file_ending"] == ".nii.gz"
    reviewed = json.loads((root / "reviewed.json").read_text())
    entry = reviewed["patient_01"]
    assert entry["reviewed_slices"] is None
    assert entry["slice_axis"] == 2 - image.reorientation.axial_axis  # nibabel's axis order
    assert "axial_axis" not in entry
    assert entry["provenance"]["model_version"] == "tiny"
    assert entry["provenance"]["voxels_added"] == 5
    assert entry["provenance"]["lesion_voxels"] == int(np.count_nonzero(truth.data))


def test_export_appends_and_never_overwrites(tmp_path, phantom):
    image, truth = phantom
    src = tmp_path / "scan_7.nii.gz"
    write_volume(src, image.data, image)
    vol = read_volume(src)
    root = tmp_path / "ds"
    first = export_case(root, vol, truth.data)
    second = export_case(root, vol, truth.data)
    assert first == "scan_7"
    assert second == "scan_7_2"
    before = label_path(root, first).read_bytes()
    with pytest.raises(DatasetError, match="already exists"):
        export_case(root, vol, np.zeros_like(truth.data), case_id="scan_7")
    assert label_path(root, first).read_bytes() == before
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 2
    with pytest.raises(DatasetError, match="not valid"):
        export_case(root, vol, truth.data, case_id="../evil")
    with pytest.raises(GeometryMismatchError):
        export_case(root, vol, truth.data[:-1])
    with pytest.raises(DatasetError, match="no reviewed slices"):
        export_case(root, vol, truth.data, reviewed_slices=[])
    with pytest.raises(DatasetError, match="outside"):
        export_case(root, vol, truth.data, reviewed_slices=[99])
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == [
        "scan_7.nii.gz",
        "scan_7_2.nii.gz",
    ]
    assert not [p for p in root.rglob("*.tmp*")]


def test_incompatible_dataset_json_is_refused(tmp_path, phantom):
    image, truth = phantom
    root = tmp_path / "other"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    with pytest.raises(DatasetError, match="another kind of dataset"):
        export_case(root, image, truth.data)
    assert not (root / "imagesTr").exists() or not list((root / "imagesTr").iterdir())


def test_exported_dataset_loads_in_trainer_reader(tmp_path, phantom):
    from napari_covid_seg.training.datasets import load_nnunet_dataset

    image, truth = phantom
    root = tmp_path / "ds"
    export_case(root, image, truth.data, case_id="a")
    lesion_z = np.flatnonzero(truth.data.any(axis=(1, 2)))
    picked = [int(lesion_z[0]), int(lesion_z[-1])]
    export_case(root, image, truth.data, case_id="b", reviewed_slices=picked)
    ds = load_nnunet_dataset(root, input_size=64)
    n = image.data.shape[image.reorientation.axial_axis]
    assert ds.case_ids.count("a") == n
    assert ds.case_ids.count("b") == 2
    assert sorted(s for s in ds.slice_ids if s.startswith("b:")) == sorted(
        f"b:z={z}" for z in picked
    )
    # The reviewed slices of case b carry the truth's lesions.
    masks_b = ds.masks[[i for i, c in enumerate(ds.case_ids) if c == "b"]]
    assert masks_b.reshape(2, -1).any(axis=1).all()


def test_reviewed_slices_index_the_files_own_voxel_axis(tmp_path, phantom):
    """A nibabel reader takes reviewed.json at its word: slice k along slice_axis."""
    image, truth = phantom
    root = tmp_path / "ds"
    lesion_z = [int(z) for z in np.flatnonzero(truth.data.any(axis=(1, 2)))[:2]]
    export_case(root, image, truth.data, case_id="c", reviewed_slices=lesion_z)
    entry = json.loads((root / "reviewed.json").read_text())["c"]
    on_disk = np.asarray(nib.load(str(label_path(root, "c"))).dataobj)
    axis = entry["slice_axis"]
    assert on_disk.shape[axis] == truth.data.shape[image.reorientation.axial_axis]
    for k in entry["reviewed_slices"]:
        # the reader's (z, y, x) is the file's (k, j, i): slice k of the file, transposed
        expected = (truth.data[k] > 0).astype(np.uint8).T
        np.testing.assert_array_equal(np.take(on_disk, k, axis=axis), expected)


def test_update_replaces_a_case_and_find_case_recognises_the_image(tmp_path, phantom):
    image, truth = phantom
    src = tmp_path / "scan_9.nii.gz"
    write_volume(src, image.data, image)
    vol = read_volume(src)
    root = tmp_path / "ds"
    assert find_case(root, src) is None
    case = export_case(root, vol, truth.data, image_fingerprint="ab12")
    assert find_case(root, src) == case == "scan_9"
    assert find_case(root, None, "ab12") == case
    assert find_case(root, tmp_path / "other.nii.gz", "ffff") is None
    edited = truth.data.copy()
    edited[edited.shape[0] // 2, :8, :8] = 1
    again = export_case(root, vol, edited, case_id=case, overwrite=True, reviewed_slices=[3])
    assert again == case
    assert list_labels(root) == ["scan_9.nii.gz"]  # updated, not a second copy
    back = read_volume(label_path(root, case), as_mask=True).data
    np.testing.assert_array_equal(back[3], (edited[3] > 0).astype(np.uint8))
    entry = json.loads((root / "reviewed.json").read_text())[case]
    assert entry["reviewed_slices"] == [3]
    assert entry["provenance"]["updates"] == 1
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 1
    assert not (root / ".export-staging").exists()


def list_labels(root) -> list[str]:
    return sorted(p.name for p in (root / "labelsTr").iterdir())
