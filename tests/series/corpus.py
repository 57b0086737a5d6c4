"""Generated CT and MR series for series search tests: each series a phantom of its own
(ellipses at series-specific places and intensities) that changes slowly along the slice
axis, written with pydicom with new UIDs, ImagePositionPatient and InstanceNumber."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SIZE = 128


@dataclass(frozen=True)
class Series:
    study_uid: str
    series_uid: str
    modality: str
    paths: list[Path]  # in slice order
    sop_uids: list[str]


def _phantom(seed: int, position: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    image = np.zeros((SIZE, SIZE), np.float64)
    for _ in range(4):
        cx, cy = rng.uniform(0.2, 0.8, 2)
        rx, ry = rng.uniform(0.08, 0.3, 2)
        level = rng.uniform(200, 1000)
        drift = rng.uniform(-0.15, 0.15, 2)  # the ellipse moves along the slices
        cx, cy = cx + drift[0] * position, cy + drift[1] * position
        image += level * (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1)
    stripes = 400 * np.sin(2 * np.pi * (rng.uniform(2, 9) * x + rng.uniform(2, 9) * y))
    return np.clip(image + stripes + 300, 0, 4095)


def write_series(
    out: Path, seed: int, slices: int, *, modality: str = "CT", study_uid: str | None = None
) -> Series:
    """``slices`` slices of one series under ``out/<series uid>/``."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    folder = out / series_uid
    folder.mkdir(parents=True)
    paths, sops = [], []
    for n in range(slices):
        position = n / max(slices - 1, 1)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE if modality == "CT" else MR_IMAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = (
            meta.MediaStorageSOPClassUID,
            meta.MediaStorageSOPInstanceUID,
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.SeriesDescription = modality, f"phantom {seed}"
        ds.InstanceNumber = n + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, 2.5 * n]
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 1024, 2048
        ds.PixelData = _phantom(seed, position).astype(np.uint16).tobytes()
        path = folder / f"{n:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sops.append(ds.SOPInstanceUID)
    return Series(study_uid, series_uid, modality, paths, sops)
