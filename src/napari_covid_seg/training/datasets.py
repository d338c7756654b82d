"""Training data: load slice datasets into memory, split them, sample them.

Two layouts are read (:func:`load_dataset` tells them apart):

* **nnU-Net v2 raw** (what the plugin's "Export for training" writes):
  ``imagesTr/<case>_0000.nii.gz`` (CT in HU), ``labelsTr/<case>.nii.gz``
  (mask, same geometry), optional ``reviewed.json`` (train only on the
  listed slices of a case). Volumes are reoriented to canonical SPL and cut
  into axial slices, like inference does.
* **2D slice folders**: ``images/<id>.(png|jpg|tif)`` (0..255, already
  lung-windowed) + ``masks/<id>.png``; ``rotate_k`` turns them anterior-up.

Every slice is normalised with :func:`inference.preprocess.normalize` and
resized to ``input_size`` squared (bilinear; masks bilinear then >= 0.5).
Slices are held in memory as float16 images ``(N, S, S)`` and uint8 masks.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CovidSegError, DatasetError
from ..inference.preprocess import LUNG_WINDOW, normalize
from ..io.images2d import IMAGE_SUFFIXES, read_image2d, read_mask2d

REVIEWED_FILE = "reviewed.json"


@dataclass
class SliceDataset:
    """Slices ready for training, all resized to one size.

    Attributes:
        images: ``(N, S, S)`` float16 in [0, 1] (lung window).
        masks: ``(N, S, S)`` uint8 in {0, 1}.
        case_ids: case of each slice (a 2D file's id when there are no cases).
        slice_ids: a readable id per slice (``"12"``, ``"case_003:z=17"``).
        by_case: whether slices come from cases (volumes) that may be split by case.
        sources: one dict per dataset folder (path, layout, counts, fingerprint).
        native_shapes: ``(H, W)`` of each slice before resizing.
    """

    images: np.ndarray
    masks: np.ndarray
    case_ids: list[str]
    slice_ids: list[str]
    by_case: bool
    sources: list[dict[str, Any]] = field(default_factory=list)
    native_shapes: list[tuple[int, int]] = field(default_factory=list)
    native_masks: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the sources' fingerprints (file names and bytes)."""
        h = hashlib.sha256()
        for s in self.sources:
            h.update(str(s.get("fingerprint", "")).encode())
        return h.hexdigest()

    @property
    def has_lesion(self) -> np.ndarray:
        """``(N,)`` bool: the slice contains lesion."""
        return self.masks.reshape(len(self.masks), -1).any(axis=1)

    def subset(self, index: np.ndarray | list[int]) -> SliceDataset:
        idx = np.asarray(index, dtype=np.int64)
        return SliceDataset(
            images=self.images[idx],
            masks=self.masks[idx],
            case_ids=[self.case_ids[i] for i in idx],
            slice_ids=[self.slice_ids[i] for i in idx],
            by_case=self.by_case,
            sources=list(self.sources),
            native_shapes=[self.native_shapes[i] for i in idx] if self.native_shapes else [],
            native_masks=None if self.native_masks is None else [self.native_masks[i] for i in idx],
        )

    @staticmethod
    def concat(parts: list[SliceDataset]) -> SliceDataset:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise DatasetError("No training slices found in the given dataset folders")
        sizes = {p.images.shape[1:] for p in parts}
        if len(sizes) > 1:
            raise DatasetError(f"Datasets have different slice sizes {sorted(sizes)}")
        return SliceDataset(
            images=np.concatenate([p.images for p in parts]),
            masks=np.concatenate([p.masks for p in parts]),
            case_ids=[c for p in parts for c in p.case_ids],
            slice_ids=[s for p in parts for s in p.slice_ids],
            by_case=all(p.by_case for p in parts),
            sources=[s for p in parts for s in p.sources],
            native_shapes=[s for p in parts for s in p.native_shapes],
            native_masks=None
            if any(p.native_masks is None for p in parts)
            else [m for p in parts for m in p.native_masks or []],
        )


# -- helpers -----------------------------------------------------------------------------------


def fingerprint_files(paths: list[Path], root: Path) -> str:
    """SHA-256 over relative file names and file bytes (sorted by name)."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.relative_to(root).as_posix()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def resize_stack(images: np.ndarray, size: int, *, is_mask: bool = False) -> np.ndarray:
    """Resize ``(N, H, W)`` slices to ``(N, size, size)`` (bilinear, align_corners=False).

    Images come back float32; masks (values in {0, 1}) bilinear then >= 0.5, uint8.
    """
    import torch
    import torch.nn.functional as F

    arr = np.asarray(images, dtype=np.float32)
    if arr.shape[1:] == (size, size):
        return (arr >= 0.5).astype(np.uint8) if is_mask else arr
    t = torch.from_numpy(np.ascontiguousarray(arr))[:, None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    if is_mask:
        return (out >= 0.5).numpy().astype(np.uint8)
    return out.numpy()


def binarize_mask(
    mask: np.ndarray, lesion_labels: tuple[int, ...] | None, where: str
) -> np.ndarray:
    """Labels -> uint8 {0, 1}; DatasetError for non-binary masks without ``lesion_labels``."""
    if lesion_labels is not None:
        return np.isin(mask, np.asarray(lesion_labels)).astype(np.uint8)
    values = np.unique(mask)
    if np.all(np.isin(values, (0, 1))) or np.all(np.isin(values, (0, 255))):
        return (mask > 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
    raise DatasetError(
        f"{where}: mask values {{{shown}}} are not binary ({{0, 1}} or {{0, 255}}). "
        "For multi-class masks set `lesion_labels` (e.g. [1, 2]) in the training config"
    )


# -- 2D slice folders ----------------------------------------------------------------------------


def _index_files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in out:
                raise DatasetError(
                    f"{folder}: two files for id {p.stem!r} ({out[p.stem].name}, {p.name})"
                )
            out[p.stem] = p
    return out


def _sort_key(s: str) -> tuple[int, int | str]:
    return (0, int(s)) if s.isdigit() else (1, s)


def load_slice_folder(
    root: str | os.PathLike,
    *,
    input_size: int = 256,
    rotate_k: int = 0,
    lesion_labels: tuple[int, ...] | None = None,
    masks_dir: str = "masks",
    keep_native: bool = False,
    roi: dict | None = None,
) -> SliceDataset:
    """Load ``root/images/<id>.*`` and ``root/masks/<id>.png`` pairs.

    Images must be 8-bit (0..255, already lung-windowed). With an ``roi``
    policy each slice is cut to its lungs' box (see :mod:`..inference.roi`)
    before resizing. Raises DatasetError for missing masks, size mismatches,
    non-binary masks or an empty folder.
    """
    root = Path(root)
    img_dir, mask_dir = root / "images", root / masks_dir
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise DatasetError(f"{root}: a 2D dataset needs images/ and {masks_dir}/ folders")
    images = _index_files(img_dir)
    masks = _index_files(mask_dir)
    if not images:
        raise DatasetError(f"{img_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    missing = sorted(set(images) - set(masks), key=_sort_key)
    if missing:
        raise DatasetError(
            f"{root}: no mask in {masks_dir}/ for image(s) {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    ids = sorted(images, key=_sort_key)
    imgs, msks, shapes, natives = [], [], [], []
    for i in ids:
        try:
            img = read_image2d(images[i])
            msk = read_mask2d(masks[i])
        except CovidSegError as e:
            raise DatasetError(f"{root}: {e}") from None
        if img.shape != msk.shape:
            raise DatasetError(
                f"{root}: image {images[i].name} is {img.shape[1]}x{img.shape[0]} but its mask "
                f"{masks[i].name} is {msk.shape[1]}x{msk.shape[0]}; they must match"
            )
        if img.dtype != np.uint8 and (img.min() < 0 or img.max() > 255):
            raise DatasetError(
                f"{images[i]}: expected an 8-bit lung-windowed slice (0..255), got values "
                f"{img.min()}..{img.max()}; use NIfTI (imagesTr/labelsTr) for HU data"
            )
        msk = binarize_mask(msk, lesion_labels, str(masks[i]))
        if rotate_k % 4:
            img, msk = np.rot90(img, rotate_k), np.rot90(msk, rotate_k)
        shapes.append(tuple(int(s) for s in img.shape))
        if keep_native:
            natives.append(np.ascontiguousarray(msk))
        img3, msk3 = _apply_roi(img[None], msk[None], "windowed_0_255", roi)
        x = normalize(img3, intensity="windowed_0_255")
        imgs.append(resize_stack(x, input_size)[0])
        msks.append(resize_stack(msk3, input_size, is_mask=True)[0])
    files = [images[i] for i in ids] + [masks[i] for i in ids]
    source = {
        "path": str(root.resolve()),
        "layout": "slices2d",
        "n_slices": len(ids),
        "rotate_k": int(rotate_k) % 4,
        "fingerprint": fingerprint_files(files, root),
    }
    return SliceDataset(
        images=np.stack(imgs).astype(np.float16),
        masks=np.stack(msks),
        case_ids=list(ids),
        slice_ids=list(ids),
        by_case=False,
        sources=[source],
        native_shapes=shapes,
        native_masks=natives if keep_native else None,
    )


def _volume_roi(
    canon: np.ndarray,
    intensity: str,
    spacing: tuple[float, ...],
    roi: dict | None,
    clutter_out: list | None = None,
    standardize_out: list | None = None,
) -> Any:
    """The ROI of a canonical volume under policy ``roi`` (None: no ROI).

    ``clutter_out``: receives the table/arms mask when the policy clears them;
    ``standardize_out``: the policy's intensity standardisation (or None).
    """
    from ..inference.roi import roi_for_canonical, roi_spec

    spec = roi_spec({"roi": roi})
    if spec is None:
        return None
    return roi_for_canonical(
        canon,
        intensity,
        spacing,  # type: ignore[arg-type]
        spec,
        clutter_out,
        standardize_out,
    )


def _standardized(img: np.ndarray, std: list, intensity: str) -> np.ndarray:
    """``img`` under the standardisation in ``std`` (``[Standardization | None]``, or empty).

    The dtype is kept (0..255 images are rounded and clipped), as in inference
    where the same map is applied before the model's window.
    """
    if not std or std[0] is None:
        return img
    out = std[0].apply(img)
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(img.dtype, copy=False)


def _apply_roi(
    img: np.ndarray, msk: np.ndarray, intensity: str, roi: dict | None
) -> tuple[np.ndarray, np.ndarray]:
    """A 0..255 slice ``(1, H, W)`` and its mask cut to the policy's ROI (unchanged without one).

    The ROI is found on the slice mapped to HU (lung window) as a one-slice
    volume at the crops' nominal spacing: exactly what ``segment`` does with
    the same slice written as HU NIfTI, so training and inference see one scale.
    """
    from .acquisition import CROP_SPACING_MM, SLICE_THICKNESS_MM, windowed_to_hu

    spacing = (SLICE_THICKNESS_MM, CROP_SPACING_MM, CROP_SPACING_MM)
    clutter: list = []
    std: list = []
    box = _volume_roi(windowed_to_hu(img), "hu", spacing, roi, clutter, std)
    if box is None:
        return img, msk
    from ..inference.roi import crop_pad, fill_value

    if std and std[0] is not None:  # found on the HU copy; the same map in 0..255 units
        img = _standardized(img, [std[0].in_windowed_units()], intensity)
    fill = fill_value({"fill_hu": -1000.0, **(roi or {})}, intensity)
    if clutter:
        img = np.where(clutter[0], np.asarray(fill, dtype=img.dtype), img)
    return crop_pad(img, box, fill), crop_pad(msk, box, 0)


# -- nnU-Net v2 raw ------------------------------------------------------------------------------


def _read_reviewed(root: Path) -> dict[str, Any]:
    path = root / REVIEWED_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must map case ids to {{'reviewed_slices': [...]}}")
    return data


def _dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def _lesion_labels_from_json(meta: dict[str, Any]) -> tuple[int, ...] | None:
    """Labels named like lesions in dataset.json (``{"lesion": 1}``), else None."""
    labels = meta.get("labels")
    if not isinstance(labels, dict):
        return None
    values = []
    for name, value in labels.items():
        if name.lower() not in ("background", "ignore") and isinstance(value, int):
            values.append(value)
    return tuple(values) if len(values) > 1 else None


def _ignore_label(meta: dict[str, Any]) -> int | None:
    """nnU-Net v2's ignore label (``labels["ignore"]`` in dataset.json), else None."""
    labels = meta.get("labels")
    value = labels.get("ignore") if isinstance(labels, dict) else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def load_nnunet_dataset(
    root: str | os.PathLike,
    *,
    input_size: int = 256,
    lesion_labels: tuple[int, ...] | None = None,
    window: tuple[float, float] = LUNG_WINDOW,
    keep_native: bool = False,
    roi: dict | None = None,
) -> SliceDataset:
    """Load an nnU-Net v2 raw dataset into canonical axial slices.

    Where ``reviewed.json`` lists ``reviewed_slices`` for a case (indices along
    the source axial axis), only those slices are used; otherwise all slices.
    nnU-Net's ignore label (``"ignore"`` in dataset.json, what the export writes
    on unreviewed slices) is honoured the same way: a slice holding any ignore
    voxel is not trained on (the loss has no per-voxel mask).
    Raises DatasetError for missing images, geometry mismatches, non-binary
    masks or no slices at all.
    """
    from ..io import read_volume
    from ..io.orientation import to_canonical

    root = Path(root)
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise DatasetError(f"{root}: an nnU-Net dataset needs imagesTr/ and labelsTr/ folders")
    meta = _dataset_json(root)
    ending = str(meta.get("file_ending", ".nii.gz"))
    if lesion_labels is None:
        lesion_labels = _lesion_labels_from_json(meta)
    ignore = _ignore_label(meta)
    label_files = sorted(p for p in lab_dir.iterdir() if p.name.endswith(ending))
    if not label_files:
        raise DatasetError(f"{lab_dir} holds no *{ending} label files")
    reviewed = _read_reviewed(root)
    imgs, msks, cases, slice_ids, shapes, files = [], [], [], [], [], []
    natives: list[np.ndarray] = []
    for lab_path in label_files:
        case = lab_path.name[: -len(ending)]
        img_path = img_dir / f"{case}_0000{ending}"
        if not img_path.is_file():
            raise DatasetError(f"{root}: case {case!r} has a label but no image {img_path.name}")
        try:
            image = read_volume(img_path, as_mask=False)
            label = read_volume(lab_path, as_mask=True)
        except CovidSegError as e:
            raise DatasetError(f"{root}: {e}") from None
        if image.data.shape != label.data.shape:
            raise DatasetError(
                f"{root}: case {case!r}: image shape {image.data.shape} differs from "
                f"label shape {label.data.shape}"
            )
        if not np.allclose(image.affine, label.affine, atol=1e-3):
            raise DatasetError(
                f"{root}: case {case!r}: the label's affine differs from the image's; "
                "re-export the mask with the image's geometry"
            )
        r = image.reorientation
        c_img = to_canonical(image.data, r)
        raw = np.asarray(label.data)
        ignored_c: set[int] = set()
        if ignore is not None:
            is_ign = raw == ignore
            if is_ign.any():
                ign_c = to_canonical(is_ign, r)
                ignored_c = set(np.flatnonzero(ign_c.reshape(ign_c.shape[0], -1).any(axis=1)))
                raw = np.where(is_ign, 0, raw)
        c_lab = to_canonical(binarize_mask(raw, lesion_labels, str(lab_path)), r)
        n = c_img.shape[0]
        entry = reviewed.get(case)
        if isinstance(entry, dict) and entry.get("reviewed_slices") is not None:
            src_axis = entry.get("axial_axis")
            if src_axis is not None and int(src_axis) != r.axial_axis:
                raise DatasetError(
                    f"{root / REVIEWED_FILE}: case {case!r} gives axial_axis {src_axis} but "
                    f"the image's axial axis is {r.axial_axis}"
                )
            zs = sorted({int(z) for z in entry["reviewed_slices"]})
            bad = [z for z in zs if not 0 <= z < n]
            if bad:
                raise DatasetError(
                    f"{root / REVIEWED_FILE}: case {case!r} lists slices {bad} outside 0..{n - 1}"
                )
            picks = [(z, r.axial_index_to_canonical(z, n)) for z in zs]
        else:
            picks = [(r.axial_index_to_canonical(c, n), c) for c in range(n)]
            picks.sort()
        picks = [(z, c) for z, c in picks if c not in ignored_c]
        if not picks:
            continue
        canon = [c for _, c in picks]
        if keep_native:
            natives += [np.ascontiguousarray(c_lab[c]) for c in canon]
        spacing_c = tuple(float(image.spacing[a]) for a in r.axes)
        # The ROI comes from the whole volume, like inference; then the picked slices.
        clutter: list = []
        std: list = []
        roi_box = _volume_roi(c_img, image.intensity, spacing_c, roi, clutter, std)
        sel_img, sel_lab = _standardized(c_img[canon], std, image.intensity), c_lab[canon]
        if roi_box is not None:
            from ..inference.roi import crop_pad, fill_value

            fill = fill_value({"fill_hu": -1000.0, **(roi or {})}, image.intensity)
            if clutter:  # the table and arms are air, as in inference
                sel_img = np.where(clutter[0][canon], np.asarray(fill, sel_img.dtype), sel_img)
            sel_img = crop_pad(sel_img, roi_box, fill)
            sel_lab = crop_pad(sel_lab, roi_box, 0)
        x = normalize(sel_img, intensity=image.intensity, window=window)
        imgs.append(resize_stack(x, input_size).astype(np.float16))
        msks.append(resize_stack(sel_lab, input_size, is_mask=True))
        cases += [case] * len(picks)
        slice_ids += [f"{case}:z={z}" for z, _ in picks]
        shapes += [tuple(int(s) for s in c_img.shape[1:])] * len(picks)
        files += [img_path, lab_path]
    if not imgs:
        raise DatasetError(f"{root}: no slices to train on (reviewed.json lists none)")
    extra = [root / REVIEWED_FILE] if (root / REVIEWED_FILE).is_file() else []
    source = {
        "path": str(root.resolve()),
        "layout": "nnunet_v2",
        "n_cases": len(set(cases)),
        "n_slices": len(slice_ids),
        "fingerprint": fingerprint_files(files + extra, root),
    }
    return SliceDataset(
        images=np.concatenate(imgs),
        masks=np.concatenate(msks),
        case_ids=cases,
        slice_ids=slice_ids,
        by_case=True,
        sources=[source],
        native_shapes=shapes,
        native_masks=natives if keep_native else None,
    )


def detect_layout(root: str | os.PathLike) -> str:
    """``"nnunet_v2"`` or ``"slices2d"``; DatasetError for anything else."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Dataset folder {root} does not exist")
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        return "nnunet_v2"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "slices2d"
    raise DatasetError(
        f"{root} is not a dataset: expected imagesTr/ + labelsTr/ (nnU-Net v2 raw, as written "
        "by 'Export for training') or images/ + masks/ (2D slices)"
    )


def load_dataset(
    root: str | os.PathLike,
    *,
    input_size: int = 256,
    rotate_k: int = 0,
    lesion_labels: tuple[int, ...] | None = None,
    keep_native: bool = False,
    roi: dict | None = None,
) -> SliceDataset:
    """Load one dataset folder of either layout (see the module docstring).

    ``keep_native`` also keeps each slice's mask at its native size (evaluation);
    ``roi``: the lung-ROI policy (None: whole slices).
    """
    layout = detect_layout(root)
    if layout == "nnunet_v2":
        return load_nnunet_dataset(
            root,
            input_size=input_size,
            lesion_labels=lesion_labels,
            keep_native=keep_native,
            roi=roi,
        )
    return load_slice_folder(
        root,
        input_size=input_size,
        rotate_k=rotate_k,
        lesion_labels=lesion_labels,
        keep_native=keep_native,
        roi=roi,
    )


def load_datasets(
    roots: list[str | os.PathLike] | tuple[str | os.PathLike, ...],
    *,
    input_size: int = 256,
    rotate_k: int = 0,
    lesion_labels: tuple[int, ...] | None = None,
    keep_native: bool = False,
    roi: dict | None = None,
) -> SliceDataset:
    """Load and concatenate several dataset folders (case ids prefixed when more than one)."""
    if not roots:
        raise DatasetError("No dataset folder given; pass --data DIR or set `data:` in the config")
    parts = []
    for k, root in enumerate(roots):
        part = load_dataset(
            root,
            input_size=input_size,
            rotate_k=rotate_k,
            lesion_labels=lesion_labels,
            keep_native=keep_native,
            roi=roi,
        )
        if len(roots) > 1:
            part.case_ids = [f"{k}/{c}" for c in part.case_ids]
            part.slice_ids = [f"{k}/{s}" for s in part.slice_ids]
        parts.append(part)
    return SliceDataset.concat(parts)


# -- splitting and sampling ----------------------------------------------------------------------


def split_dataset(
    data: SliceDataset, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Seeded train/validation split: by case where there are >= 2 cases, else by slice.

    Returns ``(train_index, val_index, record)``; ``record`` (for the output
    JSON) says how it was split and lists the validation ids.
    """
    n = len(data)
    if n == 0:
        raise DatasetError("The dataset is empty")
    rng = np.random.default_rng(seed)
    cases = list(dict.fromkeys(data.case_ids))
    by_case = data.by_case and len(cases) >= 2
    if val_fraction <= 0:
        train, val = np.arange(n), np.zeros(0, dtype=np.int64)
        by = "none"
    elif by_case:
        order = rng.permutation(len(cases))
        n_val = min(len(cases) - 1, max(1, round(val_fraction * len(cases))))
        val_cases = {cases[i] for i in order[:n_val]}
        is_val = np.array([c in val_cases for c in data.case_ids])
        train, val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        by = "case"
    else:
        if n < 2:
            raise DatasetError(
                "A validation split needs at least 2 slices; add data or set val_fraction: 0"
            )
        order = rng.permutation(n)
        n_val = min(n - 1, max(1, round(val_fraction * n)))
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
        by = "slice"
    record = {
        "by": by,
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "n_train": len(train),
        "n_val": len(val),
        "val_cases": sorted({data.case_ids[i] for i in val}, key=_sort_key),
        "val_ids": [data.slice_ids[i] for i in val],
    }
    return train, val, record


def epoch_indices(
    has_lesion: np.ndarray, n_samples: int, lesion_fraction: float, generator: Any
) -> Any:
    """Sample indices for one epoch (torch LongTensor).

    Plain shuffle when no oversampling is needed; otherwise sampling with
    replacement with weights chosen so that on average at least
    ``lesion_fraction`` of the samples contain lesion.
    """
    import torch

    n = len(has_lesion)
    n_les = int(np.count_nonzero(has_lesion))
    natural = n_les / n if n else 0.0
    if lesion_fraction <= 0 or n_les == 0 or n_les == n or natural >= lesion_fraction:
        if n_samples == n:
            return torch.randperm(n, generator=generator)
        return torch.randint(0, n, (n_samples,), generator=generator)
    w = np.where(has_lesion, lesion_fraction / n_les, (1 - lesion_fraction) / (n - n_les))
    weights = torch.as_tensor(w, dtype=torch.float64)
    return torch.multinomial(weights, n_samples, replacement=True, generator=generator)
