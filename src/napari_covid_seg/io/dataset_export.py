"""Export an image and its corrected lesion mask as one case of an nnU-Net v2 raw dataset.

Layout (what :func:`napari_covid_seg.training.datasets.load_nnunet_dataset` reads)::

    DATASET/
      dataset.json                 channel_names, labels, numTraining, file_ending, ...
      imagesTr/<case>_0000.nii.gz  CT (HU, or 0..255 if the source was windowed), source geometry
      labelsTr/<case>.nii.gz       uint8 mask {0, 1; 2 = ignore on unreviewed slices}, same geometry
      reviewed.json                {"<case>": {"reviewed_slices": [k, ...] | null,
                                               "slice_axis": int, "provenance": {...}}}

``reviewed.json`` speaks the files' own voxel axes: ``slice_axis`` is the axis
of the NIfTI voxel array (as ``nibabel.load(...).dataobj`` has it) along which
``reviewed_slices`` index the axial slices, e.g. ``2`` for a scan stored
slice by slice (``data[:, :, k]``).

Both files of a case are written to a staging folder and then renamed into
place, so a failed export leaves no half case and an update replaces the image
and the mask together. A case is never overwritten silently: an existing
``case_id`` raises :class:`~napari_covid_seg.errors.DatasetError` unless
``overwrite=True``; :func:`find_case` finds the case an image was exported as
before (same source file, or same voxels), so the Correct widget can offer to
update it instead of adding a copy. numpy/nibabel only (no torch, no Qt).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError, GeometryMismatchError
from .atomic import atomic_write_json
from .nifti import stem, write_mask, write_volume
from .volume import Volume

FILE_ENDING = ".nii.gz"
CHANNEL_NAMES = {"0": "CT"}
#: nnU-Net v2 ignore label: voxels of slices nobody reviewed are not ground truth.
IGNORE_LABEL = 2
LABELS = {"background": 0, "lesion": 1, "ignore": IGNORE_LABEL}
#: Exports before the ignore label; still appended to (dataset.json is upgraded).
LEGACY_LABELS = {"background": 0, "lesion": 1}
REVIEWED_FILE = "reviewed.json"
DATASET_FILE = "dataset.json"
STAGING_DIR = ".export-staging"
_CASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def image_path(dataset_dir: str | os.PathLike, case_id: str) -> Path:
    """``imagesTr/<case>_0000.nii.gz`` of a case."""
    return Path(dataset_dir) / "imagesTr" / f"{case_id}_0000{FILE_ENDING}"


def label_path(dataset_dir: str | os.PathLike, case_id: str) -> Path:
    """``labelsTr/<case>.nii.gz`` of a case."""
    return Path(dataset_dir) / "labelsTr" / f"{case_id}{FILE_ENDING}"


def list_cases(dataset_dir: str | os.PathLike) -> list[str]:
    """Case ids that have a label file, sorted."""
    folder = Path(dataset_dir) / "labelsTr"
    if not folder.is_dir():
        return []
    return sorted(
        p.name[: -len(FILE_ENDING)] for p in folder.iterdir() if p.name.endswith(FILE_ENDING)
    )


def sanitize_case_id(text: str) -> str:
    """A case id nnU-Net accepts: letters, digits, ``_`` and ``-`` (at most 64 chars)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_-")[:64]
    return cleaned or "case"


def case_exists(dataset_dir: str | os.PathLike, case_id: str) -> bool:
    """Whether the dataset holds an image or a label file of ``case_id``."""
    return image_path(dataset_dir, case_id).exists() or label_path(dataset_dir, case_id).exists()


_case_exists = case_exists


def _pick_case_id(
    dataset_dir: Path, case_id: str | None, image: Volume, overwrite: bool = False
) -> str:
    if case_id is not None:
        if not _CASE_RE.match(str(case_id)):
            raise DatasetError(
                f"case id {case_id!r} is not valid: use letters, digits, '_' and '-' only "
                "(at most 64 characters), e.g. 'patient_017'"
            )
        if _case_exists(dataset_dir, case_id) and not overwrite:
            raise DatasetError(
                f"case {case_id!r} already exists in {dataset_dir}; choose another case id "
                "or update the case (nothing was overwritten)"
            )
        return str(case_id)
    base = sanitize_case_id(stem(image.source_path)) if image.source_path else "case"
    candidate, n = base, 1
    while _case_exists(dataset_dir, candidate):
        n += 1
        candidate = f"{base}_{n}"
    return candidate


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path} is not valid JSON ({err}); fix or remove it") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must hold a JSON object")
    return data


def _check_dataset_json(meta: dict[str, Any], path: Path) -> None:
    """An existing dataset.json must describe the same kind of dataset."""
    if not meta:
        return
    ending = meta.get("file_ending", FILE_ENDING)
    labels = meta.get("labels", LABELS)
    channels = meta.get("channel_names", CHANNEL_NAMES)
    if ending != FILE_ENDING or labels not in (LABELS, LEGACY_LABELS) or len(channels) != 1:
        raise DatasetError(
            f"{path} describes another kind of dataset (file_ending {ending!r}, labels "
            f"{labels}, {len(channels)} channel(s)); export into a new, empty folder"
        )


def find_case(
    dataset_dir: str | os.PathLike,
    source_path: str | os.PathLike | None = None,
    image_fingerprint: str | None = None,
) -> str | None:
    """The case an image was exported as before, or None.

    Matches ``reviewed.json`` provenance: the same source file (resolved path) or
    the same ``image_fingerprint`` (voxels and affine, see
    :func:`~napari_covid_seg.correction.fingerprint`). Only cases whose files
    still exist count; the most recent export wins.
    """
    root = Path(dataset_dir)
    try:
        entries = _read_json(root / REVIEWED_FILE)
    except DatasetError:
        return None
    wanted = _resolved(source_path) if source_path else None
    found: list[tuple[str, str]] = []
    for case, entry in entries.items():
        prov = entry.get("provenance") if isinstance(entry, dict) else None
        if not isinstance(prov, dict) or not _case_exists(root, case):
            continue
        same_file = (
            wanted is not None
            and prov.get("source_image")
            and (_resolved(prov["source_image"]) == wanted)
        )
        same_voxels = image_fingerprint is not None and prov.get("image_fingerprint") == (
            image_fingerprint
        )
        if same_file or same_voxels:
            found.append((str(prov.get("exported_at") or ""), case))
    return max(found)[1] if found else None


def _resolved(path: str | os.PathLike) -> str:
    try:
        return str(Path(path).expanduser().resolve())
    except (OSError, ValueError):
        return str(path)


def file_axis(napari_axis: int, ndim: int = 3) -> int:
    """The NIfTI voxel axis of a napari ``(z, y, x)`` axis (the reader transposes)."""
    return ndim - 1 - int(napari_axis)


def _reviewed_list(reviewed_slices: Iterable[int] | None, n_axial: int) -> list[int] | None:
    if reviewed_slices is None:
        return None
    zs = sorted({int(z) for z in reviewed_slices})
    if not zs:
        raise DatasetError(
            "no reviewed slices were given, so this case would add nothing to training; "
            "mark slices reviewed or pass reviewed_slices=None to use every slice"
        )
    bad = [z for z in zs if not 0 <= z < n_axial]
    if bad:
        raise DatasetError(f"reviewed slices {bad} are outside the axial range 0..{n_axial - 1}")
    return zs


def _json_safe(value: Any) -> Any:
    """Provenance values as plain JSON (numpy scalars and arrays, paths, tuples)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path | os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | tuple):
        return list(obj)
    return str(obj)


def _with_ignore(mask: np.ndarray, reviewed: list[int] | None, axial_axis: int) -> np.ndarray:
    """uint8 labels: 1 = lesion, 0 = background, IGNORE_LABEL on unreviewed axial slices."""
    out = (mask != 0).astype(np.uint8)
    if reviewed is not None:
        unreviewed = np.ones(out.shape[axial_axis], dtype=bool)
        unreviewed[reviewed] = False
        index = [slice(None)] * out.ndim
        index[axial_axis] = np.flatnonzero(unreviewed)
        out[tuple(index)] = IGNORE_LABEL
    return out


def export_case(
    dataset_dir: str | os.PathLike,
    image: Volume,
    mask: np.ndarray,
    case_id: str | None = None,
    reviewed_slices: Iterable[int] | None = None,
    provenance: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    description: str = "Lesion masks corrected in napari-covid-seg",
    overwrite: bool = False,
    image_fingerprint: str | None = None,
) -> str:
    """Add ``image`` and its lesion ``mask`` to an nnU-Net v2 raw dataset; return the case id.

    Args:
        dataset_dir: dataset folder (created if needed; an existing dataset is appended to).
        image: the CT :class:`Volume` (its affine and header are reused for both files).
        mask: ``(z, y, x)`` labels, the shape of ``image.data``; every non-zero voxel
            is written as lesion (1), except on slices outside ``reviewed_slices``,
            which are written as nnU-Net's ignore label (:data:`IGNORE_LABEL`).
        case_id: id to use; None derives one from the image file name (``case`` when
            none) and adds ``_2``, ``_3``... if it is taken. An explicit id that exists
            raises DatasetError unless ``overwrite``.
        reviewed_slices: indices along the source's axial axis
            (``image.reorientation.axial_axis``) a human has checked; training then
            uses only these slices. None = every slice is trusted. (The index is the
            same along the file's ``slice_axis``, which ``reviewed.json`` records.)
        provenance: e.g. ``{"model_version": "default", "voxels_added": 120,
            "voxels_removed": 45}``; stored in ``reviewed.json`` with the export time.
        name, description: written to a new ``dataset.json`` (name defaults to the folder name).
        overwrite: replace the existing case ``case_id`` (image, mask and its
            ``reviewed.json`` entry together).
        image_fingerprint: stored in the provenance so that :func:`find_case`
            recognises the image later.

    Raises:
        GeometryMismatchError: ``mask`` does not have the image's shape.
        DatasetError: bad case id, an existing case id, an incompatible dataset.json,
            or an empty ``reviewed_slices``.
    """
    root = Path(dataset_dir)
    mask = np.asarray(mask)
    if image.is_mask:
        raise DatasetError("export_case needs the CT image as `image`, not a mask")
    if mask.shape != image.data.shape:
        raise GeometryMismatchError(
            f"the mask's shape {mask.shape} differs from the image's {image.data.shape}; "
            "export the mask together with the image it was made from"
        )
    axial_axis = int(image.reorientation.axial_axis)
    reviewed = _reviewed_list(reviewed_slices, image.data.shape[axial_axis])
    root.mkdir(parents=True, exist_ok=True)
    meta_path = root / DATASET_FILE
    meta = _read_json(meta_path)
    _check_dataset_json(meta, meta_path)
    reviewed_path = root / REVIEWED_FILE
    reviewed_all = _read_json(reviewed_path)
    case = _pick_case_id(root, case_id, image, overwrite)

    img_file, lab_file = image_path(root, case), label_path(root, case)
    img_file.parent.mkdir(exist_ok=True)
    lab_file.parent.mkdir(exist_ok=True)
    staging = root / STAGING_DIR
    staging.mkdir(exist_ok=True)
    staged_img, staged_lab = staging / img_file.name, staging / lab_file.name
    try:
        write_volume(staged_img, image.data, image)
        write_mask(staged_lab, _with_ignore(mask, reviewed, axial_axis), image)
        os.replace(staged_img, img_file)
        os.replace(staged_lab, lab_file)
    finally:
        staged_img.unlink(missing_ok=True)
        staged_lab.unlink(missing_ok=True)
        try:
            staging.rmdir()
        except OSError:
            pass

    record = {
        "exported_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "source_image": str(image.source_path) if image.source_path else None,
        "intensity": image.intensity,
        "lesion_voxels": int(np.count_nonzero(mask)),
    }
    if image_fingerprint:
        record["image_fingerprint"] = str(image_fingerprint)
    previous = reviewed_all.get(case) if overwrite else None
    if isinstance(previous, dict) and isinstance(previous.get("provenance"), dict):
        record["updates"] = int(previous["provenance"].get("updates", 0)) + 1
    record.update(_json_safe(provenance or {}))
    reviewed_all[case] = {
        "reviewed_slices": reviewed,
        "slice_axis": file_axis(axial_axis, image.data.ndim),
        "provenance": record,
    }
    atomic_write_json(reviewed_path, reviewed_all)
    meta = {
        "channel_names": dict(CHANNEL_NAMES),
        "labels": dict(LABELS),
        "file_ending": FILE_ENDING,
        "name": root.name if name is None else name,
        "description": description,
        **{k: v for k, v in meta.items() if k not in ("numTraining", "labels")},
    }
    meta["numTraining"] = len(list_cases(root))
    atomic_write_json(meta_path, meta)
    return case
