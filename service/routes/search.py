"""Search by text, by image (multipart or base64 JSON), and neighbours of an indexed item."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Path, Query, Request

from indexer.store.duplicates import collapse
from indexer.store.filters import Filters
from indexer.store.searcher import Hit as SearchHit
from service.deps import RuntimeDep
from service.errors import ServiceError
from service.paging import MAX_DEPTH, query_digest, read_page
from service.results import best_of_groups, hits_model
from service.runtime import Runtime
from service.schemas import (
    GroupBy,
    ImageSearchRequest,
    SearchOptions,
    SearchResponse,
    TextSearchRequest,
)
from service.uploads import read_image_upload, upload_body_doc

router = APIRouter(prefix="/v1", tags=["search"])
MAX_FETCH = 8 * MAX_DEPTH  # candidates one page may look through


async def run_search(
    rt: Runtime,
    vector: npt.NDArray[np.float32],
    options: SearchOptions,
    *,
    query: str,
    filters: Filters | None = None,
    exclude_ids: set[int] | None = None,
) -> SearchResponse:
    """One page of the results for ``vector``; ``query`` identifies the query for its page
    tokens (:func:`service.paging.query_digest`)."""
    if options.k > rt.settings.max_k:
        raise ServiceError(422, "k too large", f"at most {rt.settings.max_k}")
    started = time.perf_counter()
    loaded = rt.searcher.loaded
    page = read_page(options.page_token, query=query, version=loaded.manifest.version)
    k = min(options.k, MAX_DEPTH - page.offset)
    wanted = page.offset + k + 1  # one more: is there a next page?
    fetch = wanted * 5 if options.group_by or options.collapse else wanted
    filters = filters or options.filters

    def arrange(found: list[SearchHit]) -> tuple[list[SearchHit], dict[int, int]]:
        """The results in order (near-duplicates folded, the best hit of each group) and,
        on a later page, only those after the last one shown (a keyset cursor: with more
        candidates a result shown before only stays or moves up, so it never comes back;
        groups are cut the same way, by their best hit)."""
        folded: dict[int, int] = {}
        if options.collapse:  # near-duplicates among the candidates: the best of each group
            kept = collapse(
                [
                    (h.id, h.item.phash, h.item.series_instance_uid, h.item.sop_instance_uid)
                    for h in found
                ]
            )
            folded = dict(kept)
            found = [h for h in found if h.id in folded]
        ordered = best_of_groups(found, options.group_by)
        if page.after is not None:
            score, last = page.after
            ordered = [h for h in ordered if h.score < score or (h.score == score and h.id > last)]
        return ordered, folded

    while True:
        hits = await rt.run(
            lambda n=fetch: rt.searcher.search(
                vector, n, filters=filters, nprobe=options.nprobe, exclude_ids=exclude_ids,
                min_score=options.min_score,
            )
        )  # fmt: skip
        ordered, folded = arrange(hits)
        # an approximate index may rank deeper candidates above the last one shown, and
        # groups take several hits each: fetch more until the page can be filled (or
        # nothing more comes)
        start = 0 if page.after is not None else page.offset
        if len(ordered) > start + k or len(hits) < fetch or fetch >= MAX_FETCH:
            break
        fetch *= 2
    rt.metrics.search.observe(time.perf_counter() - started)
    shown_hits = ordered[start : start + k]
    shown = hits_model(shown_hits, rt.links)
    if options.collapse:
        shown = [h.model_copy(update={"duplicates": folded[h.id]}) for h in shown]
    final = (shown_hits[-1].score, shown_hits[-1].id) if shown_hits else None
    return SearchResponse(
        results=shown,
        next_page_token=page.next_token(k, more=len(ordered) > start + k, last=final),
        query_vector=[float(x) for x in vector] if options.return_vectors else None,
        index_version=loaded.manifest.version,
        model_fingerprint=loaded.manifest.model_fingerprint,
        took_ms=round((time.perf_counter() - started) * 1000, 3),
    )


def request_digest(route: str, body: SearchOptions, *parts: bytes) -> str:
    """The query behind a request: the route, its fields except the page and its size."""
    fields = body.model_dump_json(exclude={"page_token", "k", "return_vectors"})
    return query_digest(route, fields, *parts)


@router.post("/search/text", response_model=SearchResponse)
async def search_text(body: TextSearchRequest, rt: RuntimeDep) -> SearchResponse:
    """Images nearest to a text, e.g. ``x-ray chest anteroposterior Atelectasis``."""
    vector = await rt.embed_text(body.text)
    return await run_search(rt, vector, body, query=request_digest("text", body))


@router.post(
    "/search/image",
    response_model=SearchResponse,
    openapi_extra=upload_body_doc(ImageSearchRequest, component=True),
)
async def search_image(request: Request, rt: RuntimeDep) -> SearchResponse:
    """Images nearest to an uploaded PNG, JPEG or DICOM (rendered with the index's recipe)."""
    data, options = await read_image_upload(request, rt, ImageSearchRequest)
    vector, image = await rt.embed_image(data)
    filters = options.filters or Filters()
    meta = image.metadata
    if options.exclude_same_study:
        if not meta.study_instance_uid:
            raise ServiceError(422, "no study", "the query has no Study Instance UID")
        filters = filters.model_copy(
            update={"exclude_study_instance_uid": [meta.study_instance_uid]}
        )
    if options.exclude_same_patient:
        if not meta.patient_key:
            raise ServiceError(
                422, "no patient key", "the query has no patient ID, or no hash salt is set"
            )
        filters = filters.model_copy(update={"exclude_patient_key": [meta.patient_key]})
    query = request_digest("image", options.model_copy(update={"image": ""}), data)
    return await run_search(rt, vector, options, query=query, filters=filters)


@router.get("/items/{item_id}/neighbors", response_model=SearchResponse)
async def neighbors(
    item_id: Annotated[int, Path(ge=1, le=2**62)],
    rt: RuntimeDep,
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
    group_by: GroupBy | None = None,
    min_score: Annotated[float | None, Query(ge=-1.0, le=1.0)] = None,
    page_token: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
    collapse: Literal["near_duplicates"] | None = None,
) -> SearchResponse:
    """Items most similar to an indexed item (its stored embedding; no re-embedding)."""
    found = await rt.run(rt.catalog.embeddings, [item_id])
    rows = await rt.run(rt.catalog.items, [item_id])
    if item_id not in found or rows[item_id].status != "active":
        raise ServiceError(404, "not found", f"no item {item_id}")
    options = SearchOptions(
        k=k, group_by=group_by, min_score=min_score, page_token=page_token, collapse=collapse
    )
    query = request_digest(f"neighbors/{item_id}", options)
    return await run_search(rt, found[item_id], options, query=query, exclude_ids={item_id})
