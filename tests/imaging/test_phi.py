"""PHI policy: identifying attributes are neither stored (unless allow-listed) nor logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset

from indexer.imaging import decode_path
from indexer.imaging.phi import PHI_KEYWORDS
from indexer.settings import ImagingSettings
from tests.imaging.corpus import corpus_files

SALT = "a-test-salt-of-some-length"


def _ct(tmp_path: Path, patient_id: str = "PID-4711", name: str = "Doe^Jane") -> Path:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = dcmread(path)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = name, patient_id, "19700101"
    ds.InstitutionName, ds.AccessionNumber = "St Example Hospital", "ACC-99881"
    ds.PatientSex, ds.PatientAge = "F", "054Y"
    out = tmp_path / f"{patient_id}.dcm"
    ds.save_as(out)
    return out


def test_every_phi_keyword_is_a_dicom_keyword() -> None:
    assert set(keyword_dict) >= PHI_KEYWORDS


def test_nothing_identifying_is_stored_by_default(tmp_path: Path) -> None:
    meta = decode_path(_ct(tmp_path), ImagingSettings()).images[0].metadata
    dumped = meta.model_dump_json()
    for value in ("Doe", "Jane", "PID-4711", "19700101", "Example Hospital", "ACC-99881"):
        assert value not in dumped
    assert meta.phi is None and meta.patient_key is None
    assert meta.sop_instance_uid and meta.study_instance_uid and meta.modality == "CT"


def test_allow_listed_attributes_are_stored(tmp_path: Path) -> None:
    settings = ImagingSettings(phi_allow=["PatientSex", "PatientAge"])
    meta = decode_path(_ct(tmp_path), settings).images[0].metadata
    assert meta.phi == {"PatientAge": "054Y", "PatientSex": "F"}


def test_a_sequence_cannot_be_allow_listed_and_multiple_values_are_kept(tmp_path: Path) -> None:
    """Allowing OtherPatientIDsSequence stored the sequence's whole text: the IDs and names
    in its items, which were not allowed."""
    with pytest.raises(ValidationError, match="sequences.*OtherPatientIDsSequence"):
        ImagingSettings(phi_allow=["PatientName", "OtherPatientIDsSequence"])
    path = _ct(tmp_path)
    ds = dcmread(path)
    ds.OtherPatientIDs = ["OTHER-1", "OTHER-2"]
    item = Dataset()
    item.PatientID, item.PatientName = "NESTED-ID", "Nested^Person"
    ds.OtherPatientIDsSequence = [item]
    ds.save_as(path)
    meta = decode_path(path, ImagingSettings(phi_allow=["OtherPatientIDs"])).images[0].metadata
    assert meta.phi == {"OtherPatientIDs": "OTHER-1\\OTHER-2"}
    assert "NESTED" not in meta.model_dump_json() and "Nested" not in meta.model_dump_json()


@pytest.mark.parametrize("keyword", ["Modality", "NotAKeyword"])
def test_allow_list_takes_only_phi_keywords(keyword: str) -> None:
    with pytest.raises(ValidationError, match="not PHI keywords"):
        ImagingSettings(phi_allow=[keyword])


def test_patient_key_is_a_salted_hash(tmp_path: Path) -> None:
    settings = ImagingSettings(patient_hash_salt=SALT)
    first = decode_path(_ct(tmp_path), settings).images[0].metadata.patient_key
    again = decode_path(_ct(tmp_path / ".."), settings).images[0].metadata.patient_key
    other = decode_path(_ct(tmp_path, "PID-0001"), settings).images[0].metadata.patient_key
    resalted = ImagingSettings(patient_hash_salt=SALT + "x")
    moved = decode_path(_ct(tmp_path), resalted).images[0].metadata.patient_key
    assert first and len(first) == 32 and "4711" not in first
    assert first == again and first != other and first != moved
    with pytest.raises(ValidationError, match="at least 16"):
        ImagingSettings(patient_hash_salt="short")


def test_no_phi_value_reaches_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Decode real files carrying names and IDs at DEBUG; no value shows up in the log."""
    files = [*[p for p in corpus_files() if p.suffix == ".dcm"][:80], _ct(tmp_path)]
    values: set[str] = set()
    settings = ImagingSettings(patient_hash_salt=SALT)
    with caplog.at_level(logging.DEBUG):
        for path in files:
            try:
                ds = dcmread(path, stop_before_pixels=True, force=True)
                for keyword in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs"):
                    value = str(ds.get(keyword, "") or "").strip()
                    if len(value) >= 4:
                        values.add(value)
            except Exception:  # noqa: BLE001 - unreadable files carry no values to check
                pass
            result = decode_path(path, settings)
            for value in values:
                assert value not in result.detail
    assert len(values) > 10
    text = "\n".join(record.getMessage() for record in caplog.records)
    leaked = [value for value in values if value in text]
    assert not leaked
