"""Dataset loading (2D folders, nnU-Net v2 raw from the phantom), splits, sampling, augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_covid_seg.errors import DatasetError
from napari_covid_seg.io import write_mask, write_volume
from napari_covid_seg.io.phantom import make_phantom
from napari_covid_seg.io.volume import Volume
from napari_covid_seg.training.datasets import (
    epoch_indices,
    load_dataset,
    load_slice_folder,
    split_dataset,
)

from ..conftest import SEMISEG, require

torch = pytest.importorskip("torch")


def write_slice_folder(root: Path, n: int = 4, size: tuple[int, int] = (40, 56), value: int = 255):
    """n grayscale JPEG-like PNG slices with a bright square lesion, masks {0, value}."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        img = rng.integers(0, 80, size, dtype=np.uint8)
        mask = np.zeros(size, np.uint8)
        mask[5 : 15 + i, 8:20] = value
        img[mask > 0] = 200
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def test_slice_folder_loads_normalises_and_rotates(tmp_path):
    root = write_slice_folder(tmp_path / "d")
    d = load_slice_folder(root, input_size=64)
    assert d.images.shape == (4, 64, 64) and d.images.dtype == np.float16
    assert d.masks.dtype == np.uint8 and set(np.unique(d.masks)) == {0, 1}
    assert 0.0 <= float(d.images.min()) and float(d.images.max()) <= 1.0
    assert d.native_shapes[0] == (40, 56)
    # the lesion (top-left in the file) moves to the bottom-left with rot90(k=1)
    r = load_slice_folder(root, input_size=64, rotate_k=1)
    assert r.native_shapes[0] == (56, 40)
    m = r.masks[0]
    assert m[48:, :32].sum() > 0 and m[:32, :].sum() == 0
    assert len(d.sources[0]["fingerprint"]) == 64
    # same files -> same fingerprint; changed bytes -> different
    again = load_slice_folder(root, input_size=64)
    assert again.fingerprint == d.fingerprint
    Image.fromarray(np.zeros((40, 56), np.uint8)).save(root / "images" / "0.png")
    assert load_slice_folder(root, input_size=64).fingerprint != d.fingerprint


def test_slice_folder_errors(tmp_path):
    root = write_slice_folder(tmp_path / "a")
    (root / "masks" / "3.png").unlink()
    with pytest.raises(DatasetError, match="no mask"):
        load_slice_folder(root)
    root = write_slice_folder(tmp_path / "b")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "1.png")
    with pytest.raises(DatasetError, match="must match"):
        load_slice_folder(root)
    root = write_slice_folder(tmp_path / "c", value=2)
    m = np.array(Image.open(root / "masks" / "0.png"))
    m[0, 0] = 1
    Image.fromarray(m).save(root / "masks" / "0.png")
    with pytest.raises(DatasetError, match="lesion_labels"):
        load_slice_folder(root)
    d = load_slice_folder(root, input_size=64, lesion_labels=(2,))
    assert d.masks.sum() > 0
    empty = tmp_path / "e"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_slice_folder(empty)
    with pytest.raises(DatasetError, match="not a dataset"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing")


def test_real_semiseg_folder_gives_50_binary_pairs():
    root = require(SEMISEG)
    d = load_slice_folder(root, input_size=64, rotate_k=-1)
    assert len(d) == 50
    assert set(np.unique(d.masks)) == {0, 1}
    assert d.has_lesion.all()  # every slice of this set has lesion
    frac = d.masks.reshape(50, -1).mean(axis=1)
    assert 0.005 < np.median(frac) < 0.3
    # multiclass masks need lesion_labels
    with pytest.raises(DatasetError, match="lesion_labels"):
        load_slice_folder(root, input_size=64, masks_dir="masks-multiclass")
    multi = load_slice_folder(
        root, input_size=64, masks_dir="masks-multiclass", lesion_labels=(1, 2)
    )
    assert np.array_equal(multi.masks.sum(axis=(1, 2)) > 0, d.masks.sum(axis=(1, 2)) > 0)


def _ras_variant(vol: Volume) -> Volume:
    """The same phantom stored RAS (i, j flipped) with a matching affine."""
    data = vol.data[:, ::-1, ::-1].copy()
    a = vol.affine.copy()
    _, ny, nx = vol.data.shape
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = nx - 1, ny - 1
    return Volume(data=data, affine=a @ flip, intensity=vol.intensity)


def write_nnunet(root: Path, cases: dict[str, tuple[Volume, Volume]], reviewed=None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case, (img, lab) in cases.items():
        write_volume(root / "imagesTr" / f"{case}_0000.nii.gz", img.data, like=img)
        write_mask(root / "labelsTr" / f"{case}.nii.gz", lab.data, like=img)
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    if reviewed is not None:
        (root / "reviewed.json").write_text(json.dumps(reviewed))
    return root


@pytest.fixture(scope="module")
def phantom_pair():
    return make_phantom(shape=(8, 64, 64), spacing=(5.0, 5.6, 5.6), seed=3)


def test_nnunet_loader_canonical_slices_and_reviewed(tmp_path, phantom_pair):
    img, truth = phantom_pair
    ras_img, ras_truth = _ras_variant(img), _ras_variant(truth)
    assert ras_img.reorientation.flips[1] and ras_img.reorientation.flips[2]
    root = write_nnunet(tmp_path / "ds", {"lps": (img, truth), "ras": (ras_img, ras_truth)})
    d = load_dataset(root, input_size=64)
    assert d.by_case and len(d) == 16 and d.images.shape == (16, 64, 64)
    lps = [i for i, c in enumerate(d.case_ids) if c == "lps"]
    ras = [i for i, c in enumerate(d.case_ids) if c == "ras"]
    # both storage orders give the same canonical slices
    np.testing.assert_allclose(d.images[lps].astype(np.float32), d.images[ras].astype(np.float32))
    np.testing.assert_array_equal(d.masks[lps], d.masks[ras])
    np.testing.assert_array_equal(d.masks[lps], truth.data)  # phantom is stored canonical
    # lung-window normalisation
    expected = np.clip((img.data[3].astype(np.float32) + 1350.0) / 1500.0, 0, 1)
    np.testing.assert_allclose(d.images[lps[3]].astype(np.float32), expected, atol=2e-3)

    les = [int(z) for z in np.flatnonzero(truth.data.reshape(8, -1).any(axis=1))]
    assert les, "phantom should contain lesion slices"
    reviewed = {"lps": {"reviewed_slices": les[:2], "axial_axis": 0}}
    root2 = write_nnunet(
        tmp_path / "ds2", {"lps": (img, truth), "ras": (ras_img, ras_truth)}, reviewed=reviewed
    )
    d2 = load_dataset(root2, input_size=64)
    assert [s for s in d2.slice_ids if s.startswith("lps")] == [f"lps:z={z}" for z in les[:2]]
    assert sum(c == "ras" for c in d2.case_ids) == 8  # no list: all slices
    np.testing.assert_array_equal(d2.masks[:2], truth.data[les[:2]])
    assert d2.fingerprint != d.fingerprint


def test_nnunet_loader_errors(tmp_path, phantom_pair):
    img, truth = phantom_pair
    root = write_nnunet(tmp_path / "a", {"c1": (img, truth)})
    (root / "imagesTr" / "c1_0000.nii.gz").unlink()
    with pytest.raises(DatasetError, match="no image"):
        load_dataset(root)
    other = Volume(data=truth.data, affine=truth.affine @ np.diag([2.0, 1, 1, 1]))
    root = tmp_path / "b"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    write_volume(root / "imagesTr" / "c1_0000.nii.gz", img.data, like=img)
    write_mask(root / "labelsTr" / "c1.nii.gz", truth.data, like=other)
    with pytest.raises(DatasetError, match="affine"):
        load_dataset(root)
    root = write_nnunet(
        tmp_path / "c",
        {"c1": (img, truth)},
        reviewed={"c1": {"reviewed_slices": [99], "axial_axis": 0}},
    )
    with pytest.raises(DatasetError, match="outside"):
        load_dataset(root)
    multi = truth.data.copy()
    multi[multi > 0] = 2
    multi[0, 0, 0] = 1
    root = tmp_path / "d"
    write_nnunet(root, {"c1": (img, truth.with_data(multi))})
    (root / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="not binary"):
        load_dataset(root)


def test_split_by_case_and_by_slice(tmp_path):
    from napari_covid_seg.training.datasets import SliceDataset

    n = 20
    base = dict(images=np.zeros((n, 32, 32), np.float16), masks=np.zeros((n, 32, 32), np.uint8))
    cases = [f"c{i // 4}" for i in range(n)]
    d = SliceDataset(case_ids=cases, slice_ids=[str(i) for i in range(n)], by_case=True, **base)
    tr, va, rec = split_dataset(d, 0.2, seed=0)
    assert rec["by"] == "case" and len(rec["val_cases"]) == 1
    assert not ({cases[i] for i in tr} & {cases[i] for i in va})
    _, va2, _ = split_dataset(d, 0.2, seed=0)
    np.testing.assert_array_equal(va, va2)  # seeded
    s = SliceDataset(
        case_ids=[str(i) for i in range(n)],
        slice_ids=[str(i) for i in range(n)],
        by_case=False,
        **base,
    )
    tr, va, rec = split_dataset(s, 0.2, seed=1)
    assert rec["by"] == "slice" and len(va) == 4 and len(tr) == 16
    assert rec["val_ids"] == [str(i) for i in va]


def test_epoch_indices_oversample_lesion_slices():
    has = np.zeros(100, bool)
    has[:5] = True
    g = torch.Generator().manual_seed(0)
    idx = epoch_indices(has, 2000, 0.5, g).numpy()
    assert 0.45 < has[idx].mean() < 0.55
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(epoch_indices(has, 50, 0.5, g1), epoch_indices(has, 50, 0.5, g2))
    perm = epoch_indices(np.ones(10, bool), 10, 0.33, torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(10))


def test_augmentation_is_seeded_and_keeps_masks_binary():
    from napari_covid_seg.training.augment import augment_batch
    from napari_covid_seg.training.config import DEFAULT_AUGMENT

    params = {
        **DEFAULT_AUGMENT,
        "flip_ud": 0.5,
        "rot90": 0.5,
        "affine": 1.0,
        "gamma": 1.0,
        "brightness": 1.0,
        "contrast": 1.0,
        "noise": 1.0,
    }
    x = torch.rand(4, 1, 32, 32)
    y = (torch.rand(4, 1, 32, 32) > 0.6).float()
    a = augment_batch(x, y, params, torch.Generator().manual_seed(3))
    b = augment_batch(x, y, params, torch.Generator().manual_seed(3))
    c = augment_batch(x, y, params, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert set(torch.unique(a[1]).tolist()) <= {0.0, 1.0}
    assert float(a[0].min()) >= 0.0 and float(a[0].max()) <= 1.0
    off = {**DEFAULT_AUGMENT, "flip_lr": 0.0}  # every probability zero
    same = augment_batch(x, y, off, torch.Generator().manual_seed(0))
    assert torch.allclose(same[0], x) and torch.equal(same[1], y)
