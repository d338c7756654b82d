"""DICOM-SEG out: a lesion mask on a DICOM series' grid -> one Segmentation object.

Written with highdicom (optional: ``pip install 'napari-covid-seg[dicom-seg]'``)
as a BINARY segmentation that references every image of the source series,
one frame per source slice and segment (empty frames kept, so the SEG has
the series' exact grid and reads back with
:func:`napari_covid_seg.io.dicom.read_dicom_seg`). Label value ``v > 0``
becomes segment number ``v`` when the labels are ``1..N``; other label sets
are renumbered ``1..N`` in ascending order.

A DICOM-SEG belongs to its study: like every DICOM object of that study it
carries the source images' patient and study modules (highdicom copies them
from the source headers). It is the only output of this package that does;
NIfTI masks, exports, logs and layer metadata carry no patient tag.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CovidSegError, GeometryMismatchError
from .atomic import atomic_path
from .dicom import source_datasets
from .volume import Volume

DICOM_SEG_SUFFIX = ".dcm"
INSTALL_HINT = "pip install 'napari-covid-seg[dicom-seg]'"
#: Patient/study attributes a SEG copies from its source; absent ones are set empty.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def require_highdicom() -> Any:
    """The highdicom module, or a :class:`CovidSegError` that says how to install it."""
    try:
        import highdicom
    except ImportError:
        raise CovidSegError(
            f"writing DICOM-SEG needs the optional package highdicom: {INSTALL_HINT}"
        ) from None
    return highdicom


def _segment_codes() -> tuple[Any, Any, Any, Any]:
    from pydicom.sr.codedict import codes

    return (
        codes.SCT.MorphologicallyAbnormalStructure,  # category (CID 7150)
        codes.SCT.Lesion,  # type
        codes.SCT.Lung,  # anatomic region
        codes.DCM.ArtificialIntelligence,  # algorithm family
    )


def write_dicom_seg(
    path: str | os.PathLike,
    mask: np.ndarray,
    like: Volume,
    *,
    algorithm_type: str = "AUTOMATIC",
    series_description: str = "COVID-19 lung lesions",
    segment_label: str = "Lesion",
    algorithm_name: str = "napari-covid-seg",
) -> Path:
    """Write a ``(z, y, x)`` label mask as DICOM-SEG referencing ``like``'s source series.

    Args:
        path: output file (``.dcm`` appended if missing); written atomically,
            never over a file of the source series.
        mask: labels on ``like``'s grid (0 = background).
        like: the CT Volume read by :func:`~napari_covid_seg.io.dicom.read_dicom`
            (its ``extra["dicom"]`` names the series).
        algorithm_type: ``"AUTOMATIC"`` (model output) or ``"SEMIAUTOMATIC"``
            (corrected by a person) or ``"MANUAL"``.
        series_description: SeriesDescription of the new SEG series.
        segment_label: label of segment 1 (others get `` 2``, `` 3``...).
        algorithm_name: AlgorithmName recorded for automatic segments.

    Returns:
        The path written.

    Raises:
        CovidSegError: highdicom missing, the image not from DICOM, its files
            gone or changed, the mask of another shape, or a write failure.
    """
    hd = require_highdicom()
    from .. import __version__

    path = Path(path)
    if not path.name.lower().endswith(DICOM_SEG_SUFFIX):
        path = path.with_name(path.name + DICOM_SEG_SUFFIX)
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.shape != like.data.shape:
        raise GeometryMismatchError(
            f"mask shape {mask.shape} does not match the series' shape {like.data.shape}"
        )
    if mask.size and mask.min() < 0:
        raise CovidSegError("a label mask cannot hold negative labels")
    sources = source_datasets(like)
    for ds in sources:  # type 2 (may be empty) but required by highdicom's copy
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    folder = Path(like.extra["dicom"]["folder"])
    if path.resolve() in {(folder / n).resolve() for n in like.extra["dicom"]["files"]}:
        raise CovidSegError(f"refusing to overwrite {path}, a file of the source series")

    labels = [int(v) for v in np.unique(mask) if v != 0]
    if not labels:
        labels = [1]  # an empty mask is still one (empty) segment
    if labels == list(range(1, len(labels) + 1)):
        labelmap = mask.astype(np.uint16 if labels[-1] > 255 else np.uint8, copy=False)
    else:
        lut = np.zeros(int(mask.max()) + 1, dtype=np.uint16)
        lut[labels] = np.arange(1, len(labels) + 1)
        labelmap = lut[mask]
    category, kind, region, family = _segment_codes()
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=family, version=__version__
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=segment_label if i == 0 else f"{segment_label} {i + 1}",
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=algorithm_type,
            algorithm_identification=algorithm if algorithm_type != "MANUAL" else None,
            anatomic_regions=[region],
        )
        for i in range(len(labels))
    ]
    source_number = like.extra["dicom"].get("series_number") or 0
    try:
        with warnings.catch_warnings():
            # highdicom warns about odd source values quoting them (the patient's
            # name among them): keep patient tags out of logs.
            warnings.simplefilter("ignore", UserWarning)
            seg = hd.seg.Segmentation(
                source_images=sources,
                pixel_array=labelmap,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=int(source_number) + 1000,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="napari-covid-seg",
                manufacturer_model_name="napari-covid-seg",
                software_versions=__version__,
                device_serial_number="none",
                series_description=series_description,
                omit_empty_frames=False,
            )
    except (ValueError, TypeError, AttributeError) as e:
        raise CovidSegError(f"cannot build a DICOM-SEG for this series: {e}") from None
    try:
        with atomic_path(path, suffix=".tmp" + DICOM_SEG_SUFFIX) as tmp:
            seg.save_as(tmp)
    except OSError as e:
        raise CovidSegError(f"could not write {path}: {e}") from None
    return path
