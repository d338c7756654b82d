"""DICOM CT series in: a folder (or one file of it) -> :class:`Volume`.

pydicom parses the files; this module decides which files form the series,
orders them and checks that they make one regular grid, so the geometry is
exactly what the NIfTI of the same series (dcm2niix, nnU-Net) carries:

* slices are sorted by their position along the slice normal
  ``n = row_cosines x column_cosines`` (``ImagePositionPatient . n``), never
  by file name or InstanceNumber;
* ``data`` is ``(z, y, x) = (slice, row, column)``; the NIfTI index
  ``(i, j, k)`` is (column, row, slice) and the affine maps it to RAS+ mm:
  ``diag(-1, -1, 1) @ [row_cos * dx | col_cos * dy | n * dz | IPP of slice 0]``
  (DICOM patient coordinates are LPS);
* HU = stored value x RescaleSlope + RescaleIntercept, kept int16 when that is
  lossless, else float32.

Anything that would need a resample or a guess (gantry tilt, irregular or
missing slices, mixed sizes or orientations, RGB, multi-frame, non-CT, a
DICOMDIR) raises one :class:`InvalidImageError` that says what to do instead.

No patient-identifying tag (name, ID, birth date, accession...) is copied into
the Volume, its NIfTI header, layer metadata or any message; only UIDs,
series number, modality and file names are kept, to reference the source
series from a DICOM-SEG. pydicom is imported inside the functions, so
importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidImageError
from .nifti import is_nifti_path, looks_windowed
from .volume import HU, WINDOWED, Volume

#: File name endings taken as DICOM without looking inside.
DICOM_SUFFIXES = (".dcm", ".dicom")
DICOMDIR_NAME = "DICOMDIR"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: A folder is DICOM if one of its first entries is: how many entries / files to look at.
_SNIFF_ENTRIES = 256
_SNIFF_FILES = 16
#: Largest allowed deviation of a slice from the regular grid, as a fraction of the step.
SLICE_TOLERANCE = 0.01
#: Two slices closer than this (mm) along the normal share a position.
DUPLICATE_TOLERANCE_MM = 1e-3
#: RAS+ <- LPS+ for a 4x4 affine.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# -- cheap checks (napari calls the reader getter on every drop) ---------------
def _has_dicm_magic(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _named_dicom(name: str) -> bool:
    return name.lower().endswith(DICOM_SUFFIXES) or name.upper() == DICOMDIR_NAME


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for ``*.dcm``/``*.dicom``/``DICOMDIR`` names or files with the ``DICM`` preamble.

    Reads at most 132 bytes; never raises.
    """
    if _named_dicom(Path(path).name):
        return True
    return os.path.isfile(path) and _has_dicm_magic(path)


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True if one of a folder's first files is DICOM (by name or preamble).

    Looks at no more than 256 entries and reads 132 bytes of at most 16 files,
    so a large non-DICOM folder (a Zarr store, a NIfTI collection) is declined
    in milliseconds. Never raises.
    """
    try:
        with os.scandir(path) as it:
            sniffed = 0
            for n, entry in enumerate(it):
                if n >= _SNIFF_ENTRIES or sniffed >= _SNIFF_FILES:
                    break
                name = entry.name
                if name.startswith(".") or is_nifti_path(name) or not entry.is_file():
                    continue
                if _named_dicom(name):
                    return True
                sniffed += 1
                if _has_dicm_magic(entry.path):
                    return True
    except OSError:
        return False
    return False


def is_dicom_path(path: str | os.PathLike) -> bool:
    """A DICOM file (see :func:`is_dicom_file`) or a folder holding some. Never raises."""
    try:
        if os.path.isdir(path):
            return is_dicom_folder(path)
    except (OSError, ValueError, TypeError):
        return False
    return not is_nifti_path(path) and is_dicom_file(path)


# -- series listing ------------------------------------------------------------
@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder. Holds no patient-identifying field.

    Attributes:
        series_uid: SeriesInstanceUID ("" if the files have none).
        number: SeriesNumber, or None.
        modality: e.g. ``"CT"``, ``"MR"``, ``"SEG"``.
        files: the series' files, sorted by name (not yet by position).
        rows, columns: image size of the first file (0 for non-image objects).
    """

    series_uid: str
    number: int | None
    modality: str
    files: tuple[Path, ...]
    rows: int = 0
    columns: int = 0

    @property
    def is_ct(self) -> bool:
        return self.modality == "CT"

    def label(self) -> str:
        """One line for lists and messages: ``series 3: CT, 30 files 512x512 (1-01.dcm...)``."""
        num = f"series {self.number}" if self.number is not None else "unnumbered series"
        size = f" {self.columns}x{self.rows}" if self.rows else ""
        n = len(self.files)
        return (
            f"{num}: {self.modality or 'no modality'}, {n} file{'s' if n != 1 else ''}"
            f"{size} ({self.files[0].name}...)"
        )


def _read_header(path: Path) -> Any | None:
    """pydicom dataset without pixel data, or None if the file is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        if not _named_dicom(path.name):
            return None
        try:  # a .dcm without the 128-byte preamble (old exporters)
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            return None
        return ds if ("SOPClassUID" in ds or "Modality" in ds) else None
    except Exception:  # truncated or garbled: not usable, reported by the caller
        return None


def _sop_class(ds: Any) -> str:
    sop = ds.get("SOPClassUID")
    if sop is None and getattr(ds, "file_meta", None) is not None:
        sop = ds.file_meta.get("MediaStorageSOPClassUID")
    return str(sop or "")


def _is_dicomdir(ds: Any, path: Path) -> bool:
    return path.name.upper() == DICOMDIR_NAME or _sop_class(ds) == MEDIA_STORAGE_DIRECTORY


def _dicomdir_error(path: Path) -> InvalidImageError:
    """Point from a DICOMDIR to a series folder it indexes."""
    hint = ""
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for rec in ds.get("DirectoryRecordSequence", []):
            fid = rec.get("ReferencedFileID")
            if fid and rec.get("DirectoryRecordType") == "IMAGE":
                parts = [fid] if isinstance(fid, str) else list(fid)
                hint = f", e.g. {path.parent.joinpath(*parts[:-1])}"
                break
    except Exception:
        pass
    return InvalidImageError(
        f"{path} is a DICOMDIR, the index of a DICOM disc or archive, not an image series. "
        f"Open the folder that holds the images of one series{hint}."
    )


def _scan(folder: Path) -> tuple[list[tuple[Path, Any]], list[Path], Path | None]:
    """Headers of the DICOM files directly in ``folder``; unreadable DICOM-named files; DICOMDIR."""
    headers: list[tuple[Path, Any]] = []
    unreadable: list[Path] = []
    dicomdir: Path | None = None
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as e:
        raise InvalidImageError(f"{folder}: cannot list the folder: {e}") from None
    for p in entries:
        if is_nifti_path(p):
            continue
        ds = _read_header(p)
        if ds is None:
            if _named_dicom(p.name):
                unreadable.append(p)
            continue
        if _is_dicomdir(ds, p):
            dicomdir = p
            continue
        headers.append((p, ds))
    return headers, unreadable, dicomdir


def _no_dicom_error(folder: Path) -> InvalidImageError:
    """No DICOM file directly in ``folder``: name subfolders that hold some, if any."""
    hint = ""
    try:
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        subs = []
    found = [p.name for p in subs[:50] if is_dicom_folder(p)]
    if found:
        hint = f"; its subfolders hold some: open one of {', '.join(found[:5])}"
    return InvalidImageError(f"{folder}: no DICOM files in this folder{hint}")


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _group(headers: list[tuple[Path, Any]]) -> list[SeriesInfo]:
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for p, ds in headers:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    out = []
    for uid, items in groups.items():
        first = items[0][1]
        out.append(
            SeriesInfo(
                series_uid=uid,
                number=_int_or_none(first.get("SeriesNumber")),
                modality=str(first.get("Modality", "") or ""),
                files=tuple(p for p, _ in items),
                rows=_int_or_none(first.get("Rows")) or 0,
                columns=_int_or_none(first.get("Columns")) or 0,
            )
        )
    # CT first, then the most images, then by series number: the default is out[0].
    out.sort(key=lambda s: (not s.is_ct, -len(s.files), s.number if s.number is not None else 0))
    return out


def _folder_of(path: Path) -> Path:
    if not path.exists():
        raise InvalidImageError(f"{path}: no such file or folder")
    return path if path.is_dir() else path.parent


def list_dicom_series(path: str | os.PathLike) -> list[SeriesInfo]:
    """The series in a folder (or in the folder of a file), the default choice first.

    The default is the CT series with the most images. Files are those
    directly in the folder (no recursion).

    Raises:
        InvalidImageError: no such folder, no DICOM files in it, or only a DICOMDIR.
    """
    folder = _folder_of(Path(path))
    headers, _, dicomdir = _scan(folder)
    if not headers:
        if dicomdir is not None:
            raise _dicomdir_error(dicomdir)
        raise _no_dicom_error(folder)
    return _group(headers)


# -- geometry ------------------------------------------------------------------
def _floats(ds: Any, keyword: str, n: int, where: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InvalidImageError(
            f"{where}: {keyword} is missing or malformed, so its slices cannot be placed in "
            "space (a secondary capture or a stripped export?). Re-export the original series."
        )
    return arr


def _check_orientation(iop: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row, col = iop[:3], iop[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(col) - 1) > 1e-3
        or abs(float(row @ col)) > 1e-3
    ):
        raise InvalidImageError(
            f"{where}: ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors"
        )
    return row, col, np.cross(row, col)


def _stack_geometry(
    positions: np.ndarray,
    normal: np.ndarray,
    pixel_spacing: np.ndarray,
    where: str,
    *,
    default_step: float = 1.0,
    tilt: float = 0.0,
    allow_gaps: float | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Slice order, slice index on the grid, and step (mm) along the normal.

    Args:
        positions: ``(n, 3)`` ImagePositionPatient (LPS mm) in any order.
        normal: unit slice normal.
        pixel_spacing: (row spacing, column spacing) mm, for the sideways tolerance.
        default_step: step for a single slice.
        tilt: GantryDetectorTilt in degrees (for the message only).
        allow_gaps: a known step (mm) with which empty gaps are filled (DICOM-SEG
            frames of empty slices may be omitted); None: every gap is an error.

    Returns:
        ``order`` (indices sorting the input along the normal), ``index`` (grid
        slice of each sorted position) and the step along the normal.
    """
    d = positions @ normal
    order = np.argsort(d, kind="stable")
    d = d[order]
    pos = positions[order]
    n = len(d)
    # Sideways drift: a sheared stack (gantry tilt) is not a grid along the normal.
    rel = pos - pos[0]
    sideways = rel - np.outer(rel @ normal, normal)
    drift = float(np.linalg.norm(sideways, axis=1).max()) if n > 1 else 0.0
    if drift > SLICE_TOLERANCE * float(min(pixel_spacing)):
        what = (
            f"was acquired with a gantry tilt of {tilt:g} degrees"
            if abs(tilt) > 1e-3
            else "has slices shifted sideways (a tilted or sheared stack)"
        )
        raise InvalidImageError(
            f"{where} {what}: its slices drift up to {drift:.2f} mm across the image plane, "
            "so they do not stack along their normal. Resample it first (dcm2niix corrects "
            "gantry tilt when converting to NIfTI) and open the result."
        )
    if n == 1:
        return order, np.zeros(1, dtype=np.int64), float(default_step)
    diffs = np.diff(d)
    if np.any(diffs < DUPLICATE_TOLERANCE_MM):
        k = int(np.sum(diffs < DUPLICATE_TOLERANCE_MM)) + 1
        raise InvalidImageError(
            f"{where}: {k} images share a slice position (several acquisitions, echoes or "
            "phases in one series?). Split them into separate series first."
        )
    if allow_gaps is not None:
        step = float(allow_gaps)
        index = np.rint((d - d[0]) / step).astype(np.int64)
        resid = np.abs(d - (d[0] + index * step))
        if resid.max() > SLICE_TOLERANCE * step or len(np.unique(index)) != n:
            raise InvalidImageError(
                f"{where}: frame positions are not on a regular {step:g} mm grid"
            )
        return order, index, step
    step = float(np.median(diffs))
    big = diffs > 1.5 * step
    if np.any(big):
        i = int(np.argmax(diffs))
        missing = int(sum(round(float(g) / step) - 1 for g in diffs[big]))
        raise InvalidImageError(
            f"{where}: slices are missing: a gap of {diffs[i]:.2f} mm at {d[i]:.2f} mm along "
            f"the slice normal where the others are {step:.2f} mm apart (about {missing} "
            "slice(s) missing). Re-export the complete series."
        )
    mean_step = float((d[-1] - d[0]) / (n - 1))
    resid = np.abs(d - (d[0] + np.arange(n) * mean_step))
    if resid.max() > SLICE_TOLERANCE * mean_step:
        raise InvalidImageError(
            f"{where}: irregular slice spacing ({diffs.min():.3f} to {diffs.max():.3f} mm). "
            "Resample it to a regular grid first (e.g. dcm2niix) and open the NIfTI."
        )
    return order, np.arange(n, dtype=np.int64), mean_step


def _ras_affine(
    row: np.ndarray,
    col: np.ndarray,
    normal: np.ndarray,
    pixel_spacing: np.ndarray,
    step: float,
    origin: np.ndarray,
) -> np.ndarray:
    """4x4 NIfTI affine: voxel (column, row, slice) -> RAS+ mm."""
    lps = np.eye(4)
    lps[:3, 0] = row * pixel_spacing[1]  # along a row = next column
    lps[:3, 1] = col * pixel_spacing[0]  # down a column = next row
    lps[:3, 2] = normal * step
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


def _nifti_header(affine: np.ndarray, shape_zyx: tuple[int, ...], dtype: np.dtype) -> Any:
    """A fresh NIfTI-1 header (qform = sform = scanner, mm) carrying no DICOM tag."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(tuple(int(s) for s in shape_zyx[::-1]))
    hdr.set_data_dtype(dtype)
    hdr.set_xyzt_units("mm")
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    return hdr


# -- reading -------------------------------------------------------------------
def _check_images(series: SeriesInfo, headers: list[Any], where: str) -> None:
    if not series.is_ct:
        what = series.modality or "not marked with a modality"
        raise InvalidImageError(
            f"{where} is {what}, not CT: this plugin segments CT in Hounsfield units only"
        )
    for ds in headers:
        if _int_or_none(ds.get("NumberOfFrames")) not in (None, 1):
            raise InvalidImageError(
                f"{where} is an enhanced (multi-frame) CT object, which is not supported: "
                "export the series as classic single-frame CT images, or convert it with dcm2niix"
            )
        spp = _int_or_none(ds.get("SamplesPerPixel")) or 1
        pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        if spp != 1 or not pi.startswith("MONOCHROME"):
            raise InvalidImageError(
                f"{where} holds colour images ({pi}, {spp} samples per pixel): "
                "a CT series is greyscale (a screenshot or a secondary capture?)"
            )
    sizes: dict[tuple[int, int], int] = {}
    for ds in headers:
        key = (_int_or_none(ds.get("Rows")) or 0, _int_or_none(ds.get("Columns")) or 0)
        sizes[key] = sizes.get(key, 0) + 1
    if len(sizes) > 1:
        listing = ", ".join(f"{c}x{r} ({k} images)" for (r, c), k in sizes.items())
        raise InvalidImageError(
            f"{where}: images of different sizes in one series: {listing}. "
            "Remove the odd images or re-export the series."
        )


def _series_geometry(headers: list[Any], where: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Sort order and RAS affine of a CT series' headers (all checks applied)."""
    iops = np.stack([_floats(ds, "ImageOrientationPatient", 6, where) for ds in headers])
    if not np.allclose(iops, iops[0], atol=1e-4):
        raise InvalidImageError(
            f"{where}: images with different orientations in one series (a localizer or a "
            "reformat mixed in?). Keep only the axial images of one series."
        )
    spacings = np.stack([_floats(ds, "PixelSpacing", 2, where) for ds in headers])
    if not np.allclose(spacings, spacings[0], rtol=1e-4, atol=1e-6):
        raise InvalidImageError(f"{where}: images with different pixel spacings in one series")
    positions = np.stack([_floats(ds, "ImagePositionPatient", 3, where) for ds in headers])
    row, col, normal = _check_orientation(iops[0], where)
    first = headers[0]
    default_step = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    order, _, step = _stack_geometry(
        positions,
        normal,
        spacings[0],
        where,
        default_step=default_step,
        tilt=float(first.get("GantryDetectorTilt") or 0.0),
    )
    affine = _ras_affine(row, col, normal, spacings[0], step, positions[order[0]])
    return order, affine, step


def _pixels(path: Path, where: str) -> tuple[np.ndarray, float, float]:
    """Stored pixel array ``(rows, columns)`` and its rescale slope and intercept."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=_named_dicom(path.name))
        arr = ds.pixel_array
    except Exception as e:
        ts = ""
        try:
            ts = f" (transfer syntax {ds.file_meta.TransferSyntaxUID.name})"
        except Exception:
            pass
        raise InvalidImageError(
            f"{where}: cannot decode the pixels of {path.name}{ts}: {e}. Compressed series "
            "need the decoders: pip install 'napari-covid-seg[dicom-compressed]'"
        ) from None
    slope = float(ds.get("RescaleSlope", 1) or 1)
    inter = float(ds.get("RescaleIntercept", 0) or 0)
    return np.asarray(arr), slope, inter


def _rescaled(raws: list[np.ndarray], slopes: list[float], inters: list[float]) -> np.ndarray:
    """``(n, rows, cols)`` HU: int16 when every slice maps losslessly into int16, else float32."""
    lossless = all(r.dtype.kind in "iub" for r in raws) and all(
        float(s).is_integer() and float(i).is_integer() for s, i in zip(slopes, inters, strict=True)
    )
    if lossless:
        lo = min(
            min(r.min() * s, r.max() * s) + i for r, s, i in zip(raws, slopes, inters, strict=True)
        )
        hi = max(
            max(r.min() * s, r.max() * s) + i for r, s, i in zip(raws, slopes, inters, strict=True)
        )
        lossless = np.iinfo(np.int16).min <= lo and hi <= np.iinfo(np.int16).max
    out = np.empty((len(raws), *raws[0].shape), dtype=np.int16 if lossless else np.float32)
    for k, (r, s, i) in enumerate(zip(raws, slopes, inters, strict=True)):
        if lossless:
            out[k] = r.astype(np.int32) * int(s) + int(i)
        else:
            out[k] = r.astype(np.float32) * np.float32(s) + np.float32(i)
    return out


def read_dicom(path: str | os.PathLike, *, series_uid: str | None = None) -> Volume:
    """Read one DICOM CT series into a :class:`Volume` (napari order, HU, exact geometry).

    Args:
        path: a folder of DICOM files (its default series: the CT series with
            the most images), or one file (its own series, from the files next
            to it). A DICOM-SEG file is read as a mask (:func:`read_dicom_seg`).
        series_uid: pick this SeriesInstanceUID in the folder instead.

    Returns:
        A Volume with ``data (z, y, x)`` int16 (float32 if rescaling is not
        lossless) HU, the RAS affine, a fresh NIfTI header,
        ``source_path`` = the series folder, ``extra["dicom"]`` = the source
        reference (UIDs, folder, file names in slice order; no patient tags)
        and ``extra["notes"]`` = things the user should know (other series,
        skipped files, dropped localizers).

    Raises:
        InvalidImageError: with one message per problem (see the module doc).
    """
    path = Path(path)
    folder = _folder_of(path)
    notes: list[str] = []
    if path.is_file():
        if path.name.upper() == DICOMDIR_NAME:
            raise _dicomdir_error(path)
        ds = _read_header(path)
        if ds is None:
            raise InvalidImageError(f"{path} is not a readable DICOM file")
        if _is_dicomdir(ds, path):
            raise _dicomdir_error(path)
        if _sop_class(ds) == SEG_STORAGE:
            return read_dicom_seg(path)
        series_uid = str(ds.get("SeriesInstanceUID", ""))
    headers, unreadable, dicomdir = _scan(folder)
    if not headers:
        if dicomdir is not None:
            raise _dicomdir_error(dicomdir)
        raise _no_dicom_error(folder)
    if unreadable:
        notes.append(
            f"{folder.name}: {len(unreadable)} file(s) named like DICOM could not be read and "
            f"were skipped ({unreadable[0].name}...)"
        )
    all_series = _group(headers)
    default = all_series[0]
    if series_uid is None:
        chosen = default
        if not chosen.is_ct and len(all_series) > 1:
            listing = "; ".join(s.label() for s in all_series)
            raise InvalidImageError(
                f"{folder} holds no CT series, only: {listing}. "
                "This plugin segments CT in Hounsfield units."
            )
    else:
        match = [s for s in all_series if s.series_uid == series_uid]
        if not match:
            raise InvalidImageError(f"{folder}: no series with SeriesInstanceUID {series_uid}")
        chosen = match[0]
    if len(all_series) > 1:
        others = "; ".join(s.label() for s in all_series if s is not chosen)
        notes.append(
            f"{folder.name} holds {len(all_series)} series; opened {chosen.label()}"
            f"{' (the largest CT series)' if chosen is default else ''}. Others: {others}. "
            "To open another, open one of its files."
        )
    by_path = dict(headers)
    items = [(p, by_path[p]) for p in chosen.files]
    localizers = [p for p, ds in items if "LOCALIZER" in [str(t) for t in ds.get("ImageType", [])]]
    if localizers and len(localizers) < len(items):
        notes.append(f"{folder.name}: skipped {len(localizers)} localizer (scout) image(s)")
        items = [(p, ds) for p, ds in items if p not in set(localizers)]
    where = f"{folder} ({chosen.label()})" if len(all_series) > 1 else str(folder)
    series_headers = [ds for _, ds in items]
    _check_images(chosen, series_headers, where)
    order, affine, _ = _series_geometry(series_headers, where)
    files = [items[k][0] for k in order]
    raws, slopes, inters = [], [], []
    for p in files:
        raw, s, i = _pixels(p, where)
        raws.append(raw)
        slopes.append(s)
        inters.append(i)
    data = _rescaled(raws, slopes, inters)
    del raws
    first = series_headers[int(order[0])]
    name = folder.name if chosen is default else f"{folder.name}_series{chosen.number or 0}"
    reference = {
        "series_instance_uid": chosen.series_uid,
        "study_instance_uid": str(first.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "series_number": chosen.number,
        "modality": chosen.modality,
        "folder": str(folder.resolve()),
        "files": [p.name for p in files],
        "sop_instance_uids": [str(series_headers[int(k)].get("SOPInstanceUID", "")) for k in order],
        "name": name,
    }
    return Volume(
        data=data,
        affine=affine,
        header=_nifti_header(affine, data.shape, data.dtype),
        source_path=folder.resolve(),
        intensity=WINDOWED if looks_windowed(data) else HU,
        extra={"dicom": reference, "notes": notes},
    )


def dicom_series_key(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(folder, SeriesInstanceUID)`` of a DICOM file or folder (its default series), or None.

    Cheap (one header) for a file; lets a caller open each series once when
    several files of it are given.
    """
    p = Path(path)
    if p.is_dir():
        return (str(p.resolve()), "")
    ds = _read_header(p) if p.is_file() else None
    if ds is None:
        return None
    return (str(p.parent.resolve()), str(ds.get("SeriesInstanceUID", "")))


# -- DICOM-SEG -----------------------------------------------------------------
def _functional_group(ds: Any, frame: int, keyword: str, where: str) -> Any:
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is not None and frame < len(per) and keyword in per[frame]:
        return getattr(per[frame], keyword)[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0]:
        return getattr(shared[0], keyword)[0]
    raise InvalidImageError(f"{where}: the DICOM-SEG has no {keyword} for frame {frame + 1}")


def read_dicom_seg(path: str | os.PathLike) -> Volume:
    """Read a DICOM-SEG file as a label mask Volume on its source series' grid.

    Segment number ``s`` becomes label ``s`` (a BINARY or FRACTIONAL segment
    is "on" above half its maximum; a LABELMAP is taken as is). A SEG that
    stores a frame for every source slice (what :func:`write_dicom_seg` does)
    gets exactly the source series' shape and affine; one that omits empty
    frames covers only the slices from its first to its last frame.

    Raises:
        InvalidImageError: not a SEG, or frames not on one regular grid.
    """
    import pydicom

    path = Path(path)
    where = str(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:
        raise InvalidImageError(f"{path} is not a readable DICOM file: {e}") from None
    if _sop_class(ds) != SEG_STORAGE:
        raise InvalidImageError(f"{path} is not a DICOM-SEG (Segmentation Storage) object")
    try:
        frames = np.asarray(ds.pixel_array)
    except Exception as e:
        raise InvalidImageError(f"{path}: cannot decode the segmentation frames: {e}") from None
    if frames.ndim == 2:
        frames = frames[None]
    n = frames.shape[0]
    seg_type = str(ds.get("SegmentationType", "BINARY"))
    iop = _floats(
        _functional_group(ds, 0, "PlaneOrientationSequence", where),
        "ImageOrientationPatient",
        6,
        where,
    )
    row, col, normal = _check_orientation(iop, where)
    measures = _functional_group(ds, 0, "PixelMeasuresSequence", where)
    spacing = _floats(measures, "PixelSpacing", 2, where)
    between = measures.get("SpacingBetweenSlices")
    positions = np.stack(
        [
            _floats(
                _functional_group(ds, i, "PlanePositionSequence", where),
                "ImagePositionPatient",
                3,
                where,
            )
            for i in range(n)
        ]
    )
    if seg_type == "LABELMAP":
        segment_of = np.zeros(n, dtype=np.int64)
    else:
        segment_of = np.asarray(
            [
                int(
                    _functional_group(
                        ds, i, "SegmentIdentificationSequence", where
                    ).ReferencedSegmentNumber
                )
                for i in range(n)
            ]
        )
    # Several segments share positions: the grid is made from the distinct positions.
    d = positions @ normal
    uniq_order = np.argsort(d, kind="stable")
    keep = [int(uniq_order[0])]
    for k in uniq_order[1:]:
        if d[k] - d[keep[-1]] >= DUPLICATE_TOLERANCE_MM:
            keep.append(int(k))
    keep_arr = np.asarray(keep)
    # The step: SpacingBetweenSlices, else the smallest gap between frames (the
    # true step when frames of adjacent slices exist), else SliceThickness.
    if between:
        step = float(between)
    elif len(keep) > 1:
        step = float(np.diff(d[keep_arr]).min())
    else:
        step = float(measures.get("SliceThickness") or 1.0)
    _, index, step = _stack_geometry(
        positions[keep_arr], normal, spacing, where, default_step=step, allow_gaps=step
    )
    origin = positions[keep_arr[0]]
    slice_of = np.rint((d - d[keep_arr[0]]) / step).astype(np.int64)
    nz = int(index.max()) + 1
    top = int(segment_of.max()) if seg_type != "LABELMAP" else int(frames.max(initial=0))
    out = np.zeros((nz, *frames.shape[1:]), dtype=np.uint8 if top <= 255 else np.uint16)
    if seg_type == "FRACTIONAL":
        cut = float(ds.get("MaximumFractionalValue", 255)) / 2.0
    else:
        cut = 0
    for i in range(n):
        if seg_type == "LABELMAP":
            on = frames[i] > 0
            out[slice_of[i]][on] = frames[i][on]
        else:
            out[slice_of[i]][frames[i] > cut] = segment_of[i]
    affine = _ras_affine(row, col, normal, spacing, step, origin)
    return Volume(
        data=out,
        affine=affine,
        header=_nifti_header(affine, out.shape, out.dtype),
        source_path=path.resolve(),
        is_mask=True,
    )


def source_datasets(volume: Volume) -> list[Any]:
    """The source series' headers in the Volume's slice order (for a DICOM-SEG).

    Raises:
        InvalidImageError: the Volume was not read from DICOM, or its source
            files are gone or changed since.
    """
    import pydicom

    ref = volume.extra.get("dicom") if volume.extra else None
    if not ref or not ref.get("files"):
        raise InvalidImageError(
            "this image was not read from a DICOM series, so a DICOM-SEG cannot reference "
            "one; save the mask as NIfTI instead"
        )
    folder = Path(ref["folder"])
    out = []
    for name, uid in zip(ref["files"], ref["sop_instance_uids"], strict=True):
        p = folder / name
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=_named_dicom(name))
        except Exception as e:
            raise InvalidImageError(
                f"the source series file {p} cannot be read any more ({e}); "
                "a DICOM-SEG must reference the series the mask was drawn on"
            ) from None
        if str(ds.get("SOPInstanceUID", "")) != uid:
            raise InvalidImageError(
                f"{p} changed since the series was opened (another SOPInstanceUID); "
                "open the series again"
            )
        out.append(ds)
    return out


def distinct_series_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """One path per (folder, series) among DICOM paths, in input order.

    Several files of one series open it once. Unreadable paths are kept, so
    reading them raises the clear error.
    """
    seen: set[tuple[str, str]] = set()
    out: list[Path] = []
    for p in paths:
        key = dicom_series_key(p)
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        out.append(Path(p))
    return out
