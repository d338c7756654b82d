"""Lossless NIfTI reading and writing.

Reading returns a :class:`Volume` in napari order ``(z, y, x)`` with the
file's affine and header; writing undoes the transpose and reuses the source
affine, qform/sform and their codes, so 3D Slicer, ITK-SNAP and nnU-Net open a
written mask aligned with its image. Writes are atomic and never overwrite
the source image.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import CovidSegError, GeometryMismatchError, InvalidImageError
from .atomic import atomic_path
from .volume import HU, WINDOWED, Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MASK_NAME_HINTS = ("_mask", "_seg", "_lesions", "_lesion", "_label", "_labels")
#: Refuse to allocate more than this many voxels (2 Gi voxels, 4 GiB of int16) from a header.
MAX_VOXELS = 2**31


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True for names ending in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


def stem(path: str | os.PathLike) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suf in (".nii.gz", ".nii"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(path).stem


def name_says_mask(path: str | os.PathLike) -> bool:
    """Whether a file name marks a label map (``*_mask``, ``*_seg``, ``*_lesions``...)."""
    s = stem(path).lower()
    return any(s.endswith(h) for h in MASK_NAME_HINTS)


def _load_image(path: Path):
    import nibabel as nib

    if not path.exists():
        raise InvalidImageError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidImageError(f"{path} is a folder, not a NIfTI file")
    if path.stat().st_size == 0:
        raise InvalidImageError(f"{path} is empty (0 bytes)")
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError) as e:
        raise InvalidImageError(f"{path} is not a readable NIfTI file: {e}") from None
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise InvalidImageError(f"{path} is truncated or corrupt: {e}") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InvalidImageError(f"{path} is not a NIfTI-1/2 image ({type(img).__name__})")
    return img


def _squeeze_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """Spatial 3D shape of a file shape, or a clear error (zero-size, true 4D)."""
    if len(shape) < 2:
        raise InvalidImageError(f"{path}: a {len(shape)}D array is not an image")
    if any(s == 0 for s in shape):
        raise InvalidImageError(f"{path} has a zero-sized dimension {shape}")
    extra = shape[3:]
    if any(s != 1 for s in extra):
        raise InvalidImageError(
            f"{path} is {len(shape)}D with shape {shape}: a time series or multi-channel "
            "image. Extract one 3D volume first (e.g. `fslroi` or nibabel `slicer`)."
        )
    if len(shape) == 2:
        return (shape[0], shape[1], 1)
    return (shape[0], shape[1], shape[2])


def _read_array(img, path: Path, shape3: tuple[int, int, int]) -> np.ndarray:
    """HU array in NIfTI order: int16 when lossless, else float32; scaling applied."""
    n_vox = int(np.prod(shape3, dtype=np.int64))
    if n_vox > MAX_VOXELS:
        raise InvalidImageError(f"{path}: header claims {n_vox} voxels; refusing to allocate")
    # A plain .nii must hold at least vox_offset + the data bytes.
    if str(path).lower().endswith(".nii"):
        hdr = img.header
        need = int(hdr.get_data_offset()) + n_vox * np.dtype(hdr.get_data_dtype()).itemsize
        have = path.stat().st_size
        if have < need:
            raise InvalidImageError(
                f"{path} is truncated: the header needs {need} bytes, the file has {have}"
            )
    if str(path).lower().endswith(".gz"):
        _check_gzip_size(path, img.header, n_vox)
    stored = np.dtype(img.header.get_data_dtype())
    if stored.fields is not None or stored.kind not in "iufb":
        kind = "RGB/structured" if stored.fields is not None else f"{stored} ({stored.kind})"
        raise InvalidImageError(
            f"{path} stores {kind} voxels; a CT holds one number (HU) per voxel. "
            "Convert it to a grey-level scalar image first (e.g. from the original DICOM)."
        )
    proxy = img.dataobj
    try:
        raw = np.asanyarray(proxy.get_unscaled())
    except (EOFError, OSError, zlib.error, ValueError) as e:
        raise InvalidImageError(f"{path} is truncated or corrupt: {e}") from None
    raw = raw.reshape(shape3)
    slope = proxy.slope if np.isfinite(proxy.slope) and proxy.slope != 0 else 1.0
    inter = proxy.inter if np.isfinite(proxy.inter) else 0.0
    if raw.dtype.kind in "iub" and float(slope).is_integer() and float(inter).is_integer():
        if slope == 1 and inter == 0 and raw.dtype in (np.int16, np.uint8, np.int8, np.bool_):
            return raw.astype(np.int16 if raw.dtype == np.bool_ else raw.dtype, copy=False)
        lo, hi = (raw.min(), raw.max()) if raw.size else (0, 0)
        vals = np.array([lo, hi], dtype=np.float64) * slope + inter
        if vals.min() >= np.iinfo(np.int16).min and vals.max() <= np.iinfo(np.int16).max:
            out = raw.astype(np.int32) * int(slope) + int(inter)
            return out.astype(np.int16)
        if raw.dtype.kind in "iu" and slope == 1 and inter == 0:
            return raw  # labels or exotic integer data: keep as stored
    out = raw.astype(np.float32) * np.float32(slope) + np.float32(inter)
    if not np.all(np.isfinite(out)):
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def _check_gzip_size(path: Path, hdr, n_vox: int) -> None:
    """Compare the gzip trailer (uncompressed size mod 2**32) with what the header needs.

    Catches truncated files and headers that claim far more data than the file
    holds before anything is allocated. Only single-member gzip files (what
    nibabel, dcm2niix and ITK write) are judged; others pass through.
    """
    need = int(hdr.get_data_offset()) + n_vox * np.dtype(hdr.get_data_dtype()).itemsize
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        isize = int.from_bytes(f.read(4), "little")
        f.seek(0)
        head = f.read(2)
    if head != b"\x1f\x8b":
        raise InvalidImageError(f"{path} ends in .gz but is not gzip-compressed")
    # Allow trailing padding nibabel may add (extensions) but not missing data.
    if isize < need % 2**32 and need < 2**32:
        raise InvalidImageError(
            f"{path} is truncated or its header is wrong: the header needs {need} bytes of "
            f"image data, the compressed stream holds {isize}"
        )


def looks_windowed(data: np.ndarray) -> bool:
    """True if an intensity image is already windowed to 0..255 instead of HU.

    CT in HU always has air near -1000; a 0..255 image has no negative values
    and nothing above 255.
    """
    if data.size == 0:
        return False
    sample = data.reshape(-1)[:: max(1, data.size // 2_000_000)]
    lo, hi = float(sample.min()), float(sample.max())
    return lo >= 0.0 and hi <= 255.0 and hi > 1.0


def looks_like_labels(data: np.ndarray, max_labels: int = 8) -> bool:
    """Integer data with only a handful of non-negative values (0..max_labels)."""
    if data.dtype.kind not in "iub":
        if data.dtype.kind == "f":
            sample = data.reshape(-1)[:: max(1, data.size // 1_000_000)]
            if not np.array_equal(sample, np.round(sample)):
                return False
        else:
            return False
    sample = data.reshape(-1)[:: max(1, data.size // 1_000_000)]
    if sample.size == 0 or sample.min() < 0:
        return False
    vals = np.unique(sample)
    return len(vals) <= max_labels and vals.max() <= max_labels


def read_volume(path: str | os.PathLike, *, as_mask: bool | None = None) -> Volume:
    """Read a NIfTI file into a :class:`Volume` (napari order, HU, exact geometry).

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        as_mask: force label (True) or intensity (False) interpretation; None
            guesses from the name (``*_mask``, ``*_seg``, ``*_lesions``) and
            the content (a handful of integer labels).

    Raises:
        InvalidImageError: missing, empty, truncated, corrupt, non-NIfTI,
            zero-sized or true 4D files.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise InvalidImageError(f"{path}: not a NIfTI file name (.nii or .nii.gz expected)")
    img = _load_image(path)
    file_shape = tuple(int(s) for s in img.shape)
    shape3 = _squeeze_shape(file_shape, path)
    arr = _read_array(img, path, shape3)
    data = np.ascontiguousarray(arr.transpose(2, 1, 0))  # (i, j, k) -> (z, y, x)
    if as_mask is None:
        as_mask = name_says_mask(path) or looks_like_labels(data)
    extra: dict = {}
    if as_mask:
        data = _as_label_dtype(data)
        intensity = HU
    else:
        intensity = WINDOWED if looks_windowed(data) else HU
        if intensity == HU and looks_offset_hu(data):
            data = _shift_offset(data)
            extra["warning"] = (
                f"{path.name}: values start at 0 with air near 0: an unsigned CT stored "
                f"with a +{HU_OFFSET} offset and no intercept. Shifted by -{HU_OFFSET} to "
                "Hounsfield units; set scl_inter = -1024 in the file to silence this."
            )
            import warnings

            warnings.warn(extra["warning"], UserWarning, stacklevel=2)
    return Volume(
        data=data,
        affine=np.asarray(img.affine, dtype=np.float64),
        header=img.header.copy(),
        source_path=path.resolve(),
        source_shape=file_shape,
        intensity=intensity,
        is_mask=bool(as_mask),
        extra=extra,
    )


#: The offset of unsigned CT storage (DICOM RescaleIntercept -1024 left out).
HU_OFFSET = 1024


def looks_offset_hu(data: np.ndarray) -> bool:
    """True for a CT stored unsigned with +1024 (air near 0, tissue near 1000, no negatives).

    A CT in HU always has air near -1000; one whose minimum is 0, whose
    values reach past 1000 and where at least 1 % of the voxels are air-like
    (below 200) lost its -1024 intercept.
    """
    if data.size == 0 or data.dtype.kind not in "iuf":
        return False
    sample = data.reshape(-1)[:: max(1, data.size // 2_000_000)]
    lo, hi = float(sample.min()), float(sample.max())
    return lo >= 0.0 and hi > 1000.0 and float(np.mean(sample < 200)) >= 0.01


def _shift_offset(data: np.ndarray) -> np.ndarray:
    """``data - 1024`` as int16 when it fits, else float32."""
    if data.dtype.kind in "iu" and float(data.max()) - HU_OFFSET <= np.iinfo(np.int16).max:
        return (data.astype(np.int32) - HU_OFFSET).astype(np.int16)
    return data.astype(np.float32) - np.float32(HU_OFFSET)


def _as_label_dtype(data: np.ndarray) -> np.ndarray:
    if data.dtype.kind == "f":
        data = np.rint(data)
    hi = int(data.max()) if data.size else 0
    if data.min() < 0:
        return data.astype(np.int32)
    return data.astype(np.uint8 if hi <= 255 else np.uint16, copy=False)


def _atomic_nifti_save(img, target: Path) -> None:
    import nibabel as nib

    suffix = ".nii.gz" if target.name.lower().endswith(".gz") else ".nii"
    try:
        with atomic_path(target, suffix=".tmp" + suffix) as tmp:
            nib.save(img, str(tmp))
    except OSError as e:
        raise CovidSegError(f"could not write {target}: {e}") from None


def write_volume(
    path: str | os.PathLike,
    data: np.ndarray,
    like: Volume,
    *,
    dtype: np.dtype | str | None = None,
    is_mask: bool = False,
) -> Path:
    """Write ``(z, y, x)`` data with the geometry (affine, qform/sform, codes) of ``like``.

    The array is transposed back to NIfTI order and reshaped to the source's
    file shape (2D or singleton-4D files stay so). Refuses to overwrite the
    source image of ``like``. Returns the path written.
    """
    import nibabel as nib

    path = Path(path)
    if not is_nifti_path(path):
        raise CovidSegError(f"{path}: output name must end in .nii or .nii.gz")
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    if data.shape != like.data.shape:
        raise GeometryMismatchError(
            f"cannot write an array of shape {data.shape} with the geometry of an image of "
            f"shape {like.data.shape}: the mask does not belong to this image"
        )
    if like.source_path is not None and path.resolve() == Path(like.source_path).resolve():
        raise CovidSegError(
            f"refusing to overwrite the source image {path}; choose another file name"
        )
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    arr = data.transpose(2, 1, 0)
    if like.source_shape and int(np.prod(like.source_shape)) == arr.size:
        arr = arr.reshape(like.source_shape)
    header = like.header.copy() if like.header is not None else None
    klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = klass(np.ascontiguousarray(arr), like.affine, header=header)
    if header is not None:
        q, qc = header.get_qform(coded=True)
        s, sc = header.get_sform(coded=True)
        img.set_qform(header.get_qform() if q is None else q, code=int(qc))
        img.set_sform(header.get_sform() if s is None else s, code=int(sc))
    img.set_data_dtype(arr.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    if is_mask:
        img.header["cal_min"] = 0
        img.header["cal_max"] = float(arr.max()) if arr.size else 0.0
        img.header["descrip"] = b"napari-covid-seg lesion mask"
        img.header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    _atomic_nifti_save(img, path)
    return path


def write_mask(path: str | os.PathLike, mask: np.ndarray, like: Volume) -> Path:
    """Write a label mask (uint8, uint16 if labels > 255) with the image's geometry."""
    mask = np.asarray(mask)
    hi = int(mask.max()) if mask.size else 0
    lo = int(mask.min()) if mask.size else 0
    if lo < 0:
        raise CovidSegError("a label mask cannot hold negative labels")
    dtype = np.uint8 if hi <= 255 else np.uint16 if hi <= 65535 else np.uint32
    return write_volume(path, mask, like, dtype=dtype, is_mask=True)
