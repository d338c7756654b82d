"""Small synthetic DICOM series for tests, written with pydicom (no hand-made bytes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

#: Patient tags written into every synthetic file; none may appear in our outputs.
PATIENT_NAME = "Doe^Jane^Secret"
PATIENT_ID = "PID-7731-SECRET"
ACCESSION = "ACC99123"

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def oblique_orientation(degrees: Sequence[float] = (12.0, -7.0, 25.0)) -> np.ndarray:
    """ImageOrientationPatient (row cosines, column cosines) of a rotated axial plane."""
    rot = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    return np.concatenate([rot[:, 0], rot[:, 1]])


def hu_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """``(z, y, x)`` int16 HU, every voxel distinct enough to catch a misplaced slice."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 1500, size=shape).astype(np.int16)


def write_series(
    folder: Path,
    hu: np.ndarray,
    *,
    iop: Sequence[float] = (1, 0, 0, 0, 1, 0),
    pixel_spacing: tuple[float, float] = (0.7, 0.8),
    step: float = 2.5,
    origin: Sequence[float] = (-120.5, 33.25, -410.0),
    positions: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    instance_numbers: Sequence[int] | None = None,
    modality: str = "CT",
    series_uid: str | None = None,
    series_number: int = 3,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    slope: float = 1.0,
    intercept: float = -1024.0,
    gantry_tilt: float | None = None,
    rgb: bool = False,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> list[Path]:
    """Write ``hu (z, y, x)`` as one file per slice; slice k at ``origin + k * step * normal``.

    Stored values are ``(hu - intercept) / slope`` (uint16). Returns the paths
    in slice order (whatever their names).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(iop, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    n = hu.shape[0]
    if positions is None:
        positions = np.asarray(origin) + np.outer(np.arange(n) * step, normal)
    names = list(names) if names is not None else [f"slice{k:03d}.dcm" for k in range(n)]
    numbers = list(instance_numbers) if instance_numbers is not None else list(range(1, n + 1))
    series_uid = series_uid or generate_uid()
    sop_class = CT if modality == "CT" else MR
    stored = np.rint((hu.astype(np.float64) - intercept) / slope).astype(np.uint16)
    paths = []
    for k in range(n):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = study_uid + ".9"
        ds.Modality = modality
        ds.SeriesNumber = series_number
        ds.InstanceNumber = numbers[k]
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = "19500101"
        ds.StudyDate = "20200401"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = ACCESSION
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = step
        if gantry_tilt is not None:
            ds.GantryDetectorTilt = gantry_tilt
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        img = stored[k]
        if sizes is not None:
            rows, cols = sizes[k]
            img = np.resize(img, (rows, cols)).astype(np.uint16)
        if rgb:
            ds.SamplesPerPixel = 3
            ds.PhotometricInterpretation = "RGB"
            ds.PlanarConfiguration = 0
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit = 7
            img = np.repeat((img % 256).astype(np.uint8)[..., None], 3, axis=2)
        else:
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(img.shape[0]), int(img.shape[1])
        ds.PixelData = np.ascontiguousarray(img).tobytes()
        path = folder / names[k]
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def expected_affine(
    iop: Sequence[float],
    pixel_spacing: tuple[float, float],
    step: float,
    origin: Sequence[float],
) -> np.ndarray:
    """The RAS NIfTI affine that dcm2niix/nnU-Net would give this series."""
    iop = np.asarray(iop, dtype=np.float64)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * pixel_spacing[1]
    lps[:3, 1] = iop[3:] * pixel_spacing[0]
    lps[:3, 2] = np.cross(iop[:3], iop[3:]) * step
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
