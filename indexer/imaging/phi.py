"""The PHI policy: which DICOM attributes identify a patient, and what may be stored.

The catalog stores a fixed set of attributes it needs (:mod:`indexer.imaging.dicom_meta`):
UIDs, modality, body part, view, laterality, study date, series description, manufacturer,
image geometry. Everything else is dropped. The attributes below are the identifying ones
of DICOM PS3.15 Annex E (Basic Application Level Confidentiality Profile): names, IDs,
birth dates, addresses, physicians, operators, institutions, free-text comments and the
like. None of them is stored unless its keyword is listed in ``MEDSEARCH_PHI_ALLOW``, and
their values are never logged (log lines and refusal reasons name attributes, not values).

Patient identity may instead be stored as ``patient_key``: an HMAC-SHA256 of the issuer
and patient ID under a secret salt (``MEDSEARCH_PATIENT_HASH_SALT``), so that a search can
exclude the query's own patient without the catalog holding the ID. Without the salt the
key cannot be recomputed from a guessed ID.
"""

from __future__ import annotations

import hashlib
import hmac

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

PHI_KEYWORDS: frozenset[str] = frozenset(
    {
        # the patient
        "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs",
        "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthDate",
        "PatientBirthTime", "PatientBirthName", "PatientMotherBirthName", "PatientAge",
        "PatientSex", "PatientSize", "PatientWeight", "PatientAddress",
        "PatientTelephoneNumbers", "PatientReligiousPreference", "EthnicGroup",
        "Occupation", "MilitaryRank", "BranchOfService", "CountryOfResidence",
        "RegionOfResidence", "MedicalRecordLocator", "MedicalAlerts", "Allergies",
        "SmokingStatus", "PregnancyStatus", "LastMenstrualDate", "SpecialNeeds",
        "PatientState", "PatientComments", "AdditionalPatientHistory",
        "PatientInsurancePlanCodeSequence", "PatientSexNeutered", "ResponsiblePerson",
        "ResponsibleOrganization", "PersonName", "PersonAddress", "PersonTelephoneNumbers",
        # the visit and the order
        "AccessionNumber", "AdmissionID", "IssuerOfAdmissionID", "AdmittingDiagnosesDescription",
        "AdmittingDiagnosesCodeSequence", "CurrentPatientLocation", "VisitComments",
        "StudyID", "RequestedProcedureID", "RequestedProcedureDescription",
        "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
        "RequestAttributesSequence", "RequestingPhysician", "RequestingService",
        "PerformedProcedureStepID", "PerformedProcedureStepDescription",
        "ScheduledProcedureStepID", "ScheduledProcedureStepDescription",
        "StudyDescription",
        # people and places
        "ReferringPhysicianName", "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers", "ReferringPhysicianIdentificationSequence",
        "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
        "PerformingPhysicianName", "PerformingPhysicianIdentificationSequence",
        "NameOfPhysiciansReadingStudy", "PhysiciansReadingStudyIdentificationSequence",
        "OperatorsName", "OperatorIdentificationSequence", "ConsultingPhysicianName",
        "ContentCreatorName", "InstitutionName", "InstitutionAddress",
        "InstitutionalDepartmentName", "InstitutionCodeSequence", "StationName",
        "DeviceSerialNumber", "DetectorID", "GantryID", "GeneratorID",
        # free text that often carries identity
        "ImageComments", "AcquisitionComments", "DerivationDescription",
        "TextComments", "FrameComments", "InterpretationText",
        # containers of original values
        "OriginalAttributesSequence", "ModifiedAttributesSequence",
    }
)  # fmt: skip


def allowed_phi(ds: Dataset, allow: list[str]) -> dict[str, str] | None:
    """The allow-listed PHI attributes of ``ds`` as strings (``None`` when none are allowed)."""
    if not allow:
        return None
    out: dict[str, str] = {}
    for keyword in allow:
        value = ds.get(keyword)
        if value is None or value == "" or isinstance(value, Sequence):
            continue  # a sequence's items hold other attributes (settings refuse them)
        if isinstance(value, MultiValue | list | tuple):
            out[keyword] = "\\".join(str(v) for v in value)  # as DICOM writes several
        else:
            out[keyword] = str(value)
    return out


def sequence_keywords(keywords: list[str]) -> list[str]:
    """Those of ``keywords`` that name sequences (VR SQ)."""
    return [k for k in keywords if (tag := tag_for_keyword(k)) and dictionary_VR(tag) == "SQ"]


_SALT_CHECK = b"medsearch: same patient-hash salt on the driver and the workers"


def salt_check(salt: str | None) -> str:
    """A check value that tells whether two processes or runs hold the same patient-hash
    salt without revealing it (an HMAC of a fixed text under it); ``""`` without one."""
    if not salt:
        return ""
    return hmac.new(salt.encode(), _SALT_CHECK, hashlib.sha256).hexdigest()[:32]


def patient_key(ds: Dataset, salt: str | None) -> str | None:
    """HMAC-SHA256 of issuer + patient ID under ``salt``; ``None`` without salt or ID."""
    if not salt:
        return None
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        return None
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    message = f"{issuer}\x1f{patient_id}".encode()
    return hmac.new(salt.encode(), message, hashlib.sha256).hexdigest()[:32]
