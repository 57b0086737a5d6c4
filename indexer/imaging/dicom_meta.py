"""The catalog's DICOM attributes, read from a dataset under the PHI policy (:mod:`.phi`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydicom.dataset import Dataset

from indexer.imaging.phi import allowed_phi, patient_key
from indexer.imaging.types import ImageMetadata
from indexer.settings import ImagingSettings


def _text(ds: Dataset, keyword: str, limit: int = 256) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - an unreadable value is an absent value
        return None
    if value is None or isinstance(value, list | tuple | Dataset):
        return None
    if hasattr(value, "__iter__") and not isinstance(value, str | bytes):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text[:limit] or None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None


def _date(value: str | None) -> dt.date | None:
    if not value or len(value) < 8 or not value[:8].isdigit():
        return None
    try:
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


def _burned_in(ds: Dataset) -> bool | None:
    value = (_text(ds, "BurnedInAnnotation") or "").upper()
    return True if value == "YES" else False if value == "NO" else None


def _laterality(ds: Dataset) -> str | None:
    for keyword in ("ImageLaterality", "Laterality"):
        value = _text(ds, keyword)
        if value:
            return value
    return None


def dicom_metadata(
    ds: Dataset, *, width: int, height: int, frame: int, settings: ImagingSettings
) -> ImageMetadata:
    """Metadata of one frame (1-based ``frame``) of ``ds``; PHI only where allow-listed."""
    meta: Any = getattr(ds, "file_meta", None)
    transfer_syntax = _text(meta, "TransferSyntaxUID") if meta is not None else None
    salt = settings.patient_hash_salt.get_secret_value() if settings.patient_hash_salt else None
    return ImageMetadata(
        format="dicom",
        width=width,
        height=height,
        sop_instance_uid=_text(ds, "SOPInstanceUID", 64),
        series_instance_uid=_text(ds, "SeriesInstanceUID", 64),
        study_instance_uid=_text(ds, "StudyInstanceUID", 64),
        sop_class_uid=_text(ds, "SOPClassUID", 64),
        frame=frame,
        number_of_frames=_int(ds, "NumberOfFrames") or 1,
        modality=_text(ds, "Modality", 16),
        body_part_examined=_text(ds, "BodyPartExamined", 64),
        view_position=_text(ds, "ViewPosition", 16),
        laterality=_laterality(ds),
        study_date=_date(_text(ds, "StudyDate")),
        series_description=_text(ds, "SeriesDescription", 64),
        manufacturer=_text(ds, "Manufacturer", 64),
        photometric_interpretation=_text(ds, "PhotometricInterpretation", 16),
        transfer_syntax_uid=transfer_syntax,
        bits_stored=_int(ds, "BitsStored"),
        burned_in_annotation=_burned_in(ds),
        patient_key=patient_key(ds, salt),
        phi=allowed_phi(ds, settings.phi_allow),
    )
