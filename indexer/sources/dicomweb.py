"""A PACS as a source: ``dicomweb+http(s)://host/dicom-web?modality=CT&study_date=...``.

Query parameters filter the studies: ``modality`` (repeatable or comma separated),
``study_date`` (``YYYYMMDD`` or a range ``YYYYMMDD-YYYYMMDD``), ``study_uid``
(repeatable). Studies are listed with QIDO-RS (paged), their instances likewise, and
each instance is fetched with WADO-RS only when the decoder asks for it. Item URIs name
the instance by UID (``dicomweb+http://host/dicom-web/studies/S/series/R/instances/I``),
so the reader skips instances already in the catalog before fetching anything:
re-running a build is an incremental sync.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import parse_qs, urlsplit

from indexer.errors import SourceError
from indexer.sources.base import SourceItem
from indexer.sources.dicomweb_client import (
    DicomWebClient,
    DicomWebSettings,
    check_uid,
    tag_value,
)

logger = logging.getLogger(__name__)

SCHEMES = ("dicomweb+http://", "dicomweb+https://")
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
_INSTANCE = re.compile(r"/studies/([0-9.]+)/series/([0-9.]+)/instances/([0-9.]+)$")


def is_dicomweb(spec: str) -> bool:
    return spec.lower().startswith(SCHEMES)


def split_spec(spec: str) -> tuple[str, dict[str, list[str]]]:
    """(HTTP base URL, filters) of a ``dicomweb+http(s)://`` source argument."""
    parts = urlsplit(spec[len("dicomweb+") :])
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SourceError("a DICOMweb source looks like dicomweb+http://host:port/dicom-web")
    base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return base, parse_qs(parts.query)


class DicomWebSource:
    def __init__(self, spec: str, settings: DicomWebSettings | None = None) -> None:
        self.base_url, self.filters = split_spec(spec)
        self.uri = "dicomweb+" + self.base_url
        self.client = DicomWebClient(self.base_url, settings)

    def close(self) -> None:
        self.client.close()

    def _study_queries(self) -> list[dict[str, str]]:
        query: dict[str, str] = {}
        modalities = [m for v in self.filters.get("modality", []) for m in v.split(",") if m]
        if modalities:
            query["ModalitiesInStudy"] = "\\".join(modalities)
        dates = self.filters.get("study_date", [])
        if dates:
            if not re.fullmatch(r"\d{8}(-\d{8})?|\d{8}-|-\d{8}", dates[0]):
                raise SourceError("study_date is YYYYMMDD or YYYYMMDD-YYYYMMDD")
            query["StudyDate"] = dates[0]
        uids = [check_uid(u) for v in self.filters.get("study_uid", []) for u in v.split(",")]
        if uids:
            return [{**query, "StudyInstanceUID": uid} for uid in uids]
        return [query]

    def __iter__(self) -> Iterator[SourceItem]:
        for query in self._study_queries():
            for study in self.client.qido("/studies", query):
                study_uid = tag_value(study, STUDY_UID)
                if not study_uid:
                    continue
                fields = {"includefield": "00200013"}
                for inst in self.client.qido(f"/studies/{check_uid(study_uid)}/instances", fields):
                    series_uid, sop_uid = tag_value(inst, SERIES_UID), tag_value(inst, SOP_UID)
                    if series_uid and sop_uid:
                        yield self._item(str(study_uid), str(series_uid), str(sop_uid))

    def _item(self, study: str, series: str, sop: str) -> SourceItem:
        rel = f"studies/{study}/series/{series}/instances/{sop}"

        def fetch() -> BinaryIO:
            return io.BytesIO(self.client.instance(study, series, sop))

        return SourceItem(uri=f"{self.uri}/{rel}", relpath=rel, size=None, open=fetch)


def open_dicomweb_uri(uri: str, settings: DicomWebSettings | None = None) -> BinaryIO:
    """Fetch one instance by its item URI (thumbnails, re-reads)."""
    base_and_path = uri[len("dicomweb+") :]
    match = _INSTANCE.search(base_and_path)
    if not match:
        raise SourceError("not a DICOMweb instance URI")
    base = base_and_path[: match.start()]
    client = DicomWebClient(base, settings)
    try:
        return io.BytesIO(client.instance(*match.groups()))
    finally:
        client.close()
