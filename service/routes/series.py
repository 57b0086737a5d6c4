"""Search by series and by study: ``POST /v1/search/series`` (see
:mod:`indexer.store.series_search` for how series and studies are scored).

The query is one of: ``text``; ``series_uid`` (the series' vector from the catalog, or, for
a series the catalog does not hold, up to ``PACS_SLICES`` of its instances fetched from the
configured PACS, evenly spaced by Instance Number, embedded and pooled); ``study_uid`` (its
series' vectors pooled); several slices, as ``images`` (base64) or multipart ``file`` parts
with the other fields as JSON in ``options``, pooled like a series.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from indexer.errors import SourceError
from indexer.sources.dicomweb import SERIES_UID, SOP_UID, STUDY_UID
from indexer.sources.dicomweb_client import DicomWebClient, tag_value
from indexer.store.series import POOLING, member_items, series_by_uid, series_embeddings
from indexer.store.series import series_of_study as study_series
from indexer.store.series_search import SCORING, SeriesHit, SeriesQuery, StudyHit
from service.deps import RuntimeDep
from service.errors import ServiceError
from service.json_limits import load_object
from service.routes.dicom import INSTANCE_NUMBER
from service.runtime import Runtime, all_of, b64decode
from service.series_schemas import (
    MAX_QUERY_SLICES,
    BestItem,
    SeriesResult,
    SeriesSearchRequest,
    SeriesSearchResponse,
    StudyResult,
)
from service.uploads import only_declared_parts

router = APIRouter(prefix="/v1", tags=["search"])
PACS_SLICES = 8

SERIES_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SeriesSearchRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "maxItems": MAX_QUERY_SLICES,
                            "description": "one or more slices, pooled into one query",
                        },
                        "options": {
                            "type": "string",
                            "description": "JSON of SeriesSearchRequest fields except images",
                        },
                    },
                }
            },
        },
    }
}


def _invalid(exc: Exception) -> ServiceError:
    if isinstance(exc, ValidationError):
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:20]]
        return ServiceError(422, "invalid request", errors)
    return ServiceError(422, "invalid options", str(exc)[:300])


async def _read_request(request: Request, rt: Runtime) -> tuple[list[bytes], SeriesSearchRequest]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = rt.settings.max_body_bytes
    if ctype == "application/json":
        try:
            body = SeriesSearchRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise _invalid(exc) from None
        return [b64decode(image, limit) for image in body.images or []], body
    if ctype != "multipart/form-data":
        raise ServiceError(
            415, "unsupported media type", "send multipart/form-data or application/json"
        )
    try:
        form = await request.form(
            max_files=MAX_QUERY_SLICES,
            max_fields=rt.settings.max_multipart_parts,
            max_part_size=limit,
        )
    except Exception as exc:  # noqa: BLE001 - malformed or oversized multipart
        message = str(getattr(exc, "detail", exc))  # too many files: 422, as the schema says
        status = 413 if "exceeded" in message else 422
        raise ServiceError(status, "invalid multipart body", message[:200]) from None
    only_declared_parts(form.keys())
    uploads = form.getlist("file")
    if not uploads or not all(isinstance(u, UploadFile) for u in uploads):
        raise ServiceError(422, "invalid multipart body", "one or more 'file' parts are required")
    if len(uploads) > MAX_QUERY_SLICES:
        raise ServiceError(422, "too many files", f"at most {MAX_QUERY_SLICES} slices")
    files = [await u.read() for u in uploads if isinstance(u, UploadFile)]
    try:
        fields = load_object(form.get("options"), rt.settings.max_json_depth)
        if "images" in fields:
            raise ValueError("send the slices as 'file' parts, not images in options")
        body = SeriesSearchRequest.model_validate({**fields, "images": ["-"] * len(files)})
    except (ValueError, ValidationError) as exc:
        raise _invalid(exc) from None
    return files, body


def _pacs_slices(pacs: DicomWebClient, series_uid: str) -> list[bytes]:
    """Up to ``PACS_SLICES`` instances of a series from the PACS, evenly spaced."""
    found: list[tuple[int, str, str]] = []
    params = {"SeriesInstanceUID": series_uid, "includefield": INSTANCE_NUMBER}
    for record in pacs.qido("/instances", params):
        study, sop = tag_value(record, STUDY_UID), tag_value(record, SOP_UID)
        if study and sop and tag_value(record, SERIES_UID) in (None, series_uid):
            number = tag_value(record, INSTANCE_NUMBER)
            found.append((int(number) if number is not None else 0, str(study), str(sop)))
    if not found:
        raise ServiceError(404, "not found", "the series is neither in the catalog nor the PACS")
    found.sort()
    picks = sorted({round(i) for i in np.linspace(0, len(found) - 1, min(PACS_SLICES, len(found)))})
    return [pacs.instance(found[i][1], series_uid, found[i][2]) for i in picks]


async def _embed_slices(rt: Runtime, files: list[bytes]) -> SeriesQuery:
    if any(not data for data in files):
        raise ServiceError(422, "empty image", "an uploaded file is empty")
    embedded = await all_of(rt.embed_image(data) for data in files)
    return SeriesQuery.of_slices([vector for vector, _ in embedded])


async def _series_query(rt: Runtime, uid: str) -> SeriesQuery:
    found = await rt.run(series_by_uid, rt.catalog, [uid])
    if uid in found:
        _, members = await rt.run(member_items, rt.catalog, uid)
        return SeriesQuery(found[uid][1], members if len(members) else None)
    if rt.pacs is None:
        raise ServiceError(404, "not found", "the series is not in the catalog (and no PACS)")
    try:
        files = await rt.run(_pacs_slices, rt.pacs, uid)
    except SourceError as exc:
        raise ServiceError(502, "PACS unavailable", str(exc)[:300]) from None
    return await _embed_slices(rt, files)


async def _study_query(rt: Runtime, uid: str) -> SeriesQuery:
    ids = (await rt.run(study_series, rt.catalog, [uid])).get(uid)
    if not ids:
        raise ServiceError(404, "not found", "the study has no series in the catalog")
    vectors = await rt.run(series_embeddings, rt.catalog, ids)
    return SeriesQuery.of_slices([vectors[i] for i in sorted(vectors)])


async def _query(rt: Runtime, body: SeriesSearchRequest, files: list[bytes]) -> SeriesQuery:
    if body.text:
        return SeriesQuery(await rt.embed_text(body.text))
    if body.series_uid:
        return await _series_query(rt, body.series_uid)
    if body.study_uid:
        return await _study_query(rt, body.study_uid)
    return await _embed_slices(rt, files)


def _series_result(rt: Runtime, hit: SeriesHit) -> SeriesResult:
    series = hit.series
    best = hit.best_items[0].item if hit.best_items else None
    links = rt.links.for_uids(
        series.study_instance_uid,
        series.series_instance_uid,
        best.sop_instance_uid if best else None,
    )
    links["wado_url"] = rt.links.for_uids(
        series.study_instance_uid, series.series_instance_uid, None
    )["wado_url"]
    return SeriesResult(
        series_instance_uid=series.series_instance_uid,
        study_instance_uid=series.study_instance_uid,
        modality=series.modality,
        series_description=series.series_description,
        body_part_examined=series.body_part_examined,
        instances=series.members,
        score=round(hit.score, 6),
        best_items=[
            BestItem(
                id=b.item.id,
                score=round(b.score, 6),
                sop_instance_uid=b.item.sop_instance_uid,
                frame=b.item.frame,
                thumbnail_url=f"/v1/items/{b.item.id}/thumbnail",
            )
            for b in hit.best_items
        ],
        **links,
    )


def _study_result(rt: Runtime, hit: StudyHit) -> StudyResult:
    series = [_series_result(rt, s) for s in hit.series]
    viewer = rt.links.for_uids(hit.study_instance_uid, None, None)["viewer_url"]
    return StudyResult(
        study_instance_uid=hit.study_instance_uid,
        score=round(hit.score, 6),
        series=series,
        viewer_url=viewer,
    )


@router.post(
    "/search/series",
    response_model=SeriesSearchResponse,
    openapi_extra=SERIES_BODY_DOC,
    responses={409: {"description": "the index version has no series index"}},
)
async def search_series(request: Request, rt: RuntimeDep) -> SeriesSearchResponse:
    """Series (or, with ``level=study``, studies) nearest to a text, a series, a study, or
    one or more uploaded slices."""
    files, body = await _read_request(request, rt)
    if body.k > rt.settings.max_k:
        raise ServiceError(422, "k too large", f"at most {rt.settings.max_k}")
    started = time.perf_counter()
    query = await _query(rt, body, files)
    loaded = rt.searcher.loaded
    response = SeriesSearchResponse(
        level=body.level,
        pooling=POOLING,
        scoring=SCORING["rerank" if body.rerank else body.level],
        reranked=body.rerank,
        index_version=loaded.manifest.version,
        model_fingerprint=loaded.manifest.model_fingerprint,
        took_ms=0.0,
    )
    if body.level == "study":
        studies = await rt.run(
            lambda: rt.series.search_studies(
                query, body.k, filters=body.filters, min_score=body.min_score
            )
        )
        response.studies = [_study_result(rt, hit) for hit in studies]
    else:
        hits = await rt.run(
            lambda: rt.series.search(
                query, body.k, filters=body.filters, min_score=body.min_score, rerank=body.rerank
            )
        )
        response.results = [_series_result(rt, hit) for hit in hits]
    response.took_ms = round((time.perf_counter() - started) * 1000, 3)
    return response
