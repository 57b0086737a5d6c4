"""Search by DICOM UIDs: the service fetches the instance from its configured PACS.

Clients pass UIDs, never a URL (no server-side request forgery): the PACS is the one in
the settings (``MEDSEARCH_PACS_URL``). With a SOP Instance UID that instance is used; with
a series, its middle instance (by Instance Number); with only a study, the middle
instance of its largest series.
"""

from __future__ import annotations

from collections import defaultdict

from fastapi import APIRouter

from indexer.errors import SourceError
from indexer.sources.dicomweb import SERIES_UID, SOP_UID
from indexer.sources.dicomweb_client import DicomWebClient, tag_value
from indexer.store.filters import Filters
from service.deps import RuntimeDep
from service.errors import ServiceError
from service.routes.search import request_digest, run_search
from service.schemas import DicomSearchRequest, SearchResponse

router = APIRouter(prefix="/v1", tags=["search"])
INSTANCE_NUMBER = "00200013"


def _choose_instance(pacs: DicomWebClient, body: DicomSearchRequest) -> tuple[str, str]:
    """(series UID, SOP UID) of the instance to search with."""
    if body.sop_uid:
        if not body.series_uid:
            raise ServiceError(422, "series_uid needed", "give series_uid with sop_uid")
        return body.series_uid, body.sop_uid
    path = f"/studies/{body.study_uid}/instances"
    if body.series_uid:
        path = f"/studies/{body.study_uid}/series/{body.series_uid}/instances"
    by_series: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for record in pacs.qido(path, {"includefield": INSTANCE_NUMBER}):
        series, sop = tag_value(record, SERIES_UID), tag_value(record, SOP_UID)
        if series and sop:
            number = tag_value(record, INSTANCE_NUMBER)
            by_series[str(series)].append((int(number) if number is not None else 0, str(sop)))
    if not by_series:
        raise ServiceError(404, "not found", "the PACS has no instance with these UIDs")
    series = max(by_series, key=lambda s: (len(by_series[s]), s))
    instances = sorted(by_series[series])
    return series, instances[len(instances) // 2][1]


def _fetch(pacs: DicomWebClient, body: DicomSearchRequest) -> bytes:
    series, sop = _choose_instance(pacs, body)
    return pacs.instance(body.study_uid, series, sop)


@router.post(
    "/search/dicom",
    response_model=SearchResponse,
    responses={502: {"description": "the PACS is unavailable"}},
)
async def search_dicom(body: DicomSearchRequest, rt: RuntimeDep) -> SearchResponse:
    """Images nearest to an instance in the configured PACS, given by its UIDs."""
    if rt.pacs is None:
        raise ServiceError(404, "no PACS configured", "set MEDSEARCH_PACS_URL")
    pacs = rt.pacs
    try:
        data = await rt.run(_fetch, pacs, body)
    except SourceError as exc:
        message = str(exc)
        if "answered 404" in message:
            raise ServiceError(404, "not found", "the PACS has no such instance") from None
        raise ServiceError(502, "PACS unavailable", message[:300]) from None
    vector, _ = await rt.embed_image(data)
    filters = body.filters
    if body.exclude_same_study:
        base = filters.model_dump() if filters else {}
        base["exclude_study_instance_uid"] = [body.study_uid]
        filters = Filters.model_validate(base)
    query = request_digest("dicom", body)
    return await run_search(rt, vector, body, query=query, filters=filters)
