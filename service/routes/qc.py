"""Quality control of an image: how unlike the indexed images it is (outlier score)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from indexer.errors import CatalogError
from indexer.store.outliers import mean_distance
from service.deps import RuntimeDep
from service.errors import ServiceError
from service.qc_schemas import QcNeighbor, QcRequest, QcResponse
from service.uploads import read_image_upload, upload_body_doc

router = APIRouter(prefix="/v1", tags=["qc"])


@router.post("/qc", response_model=QcResponse, openapi_extra=upload_body_doc(QcRequest))
async def qc(request: Request, rt: RuntimeDep) -> QcResponse:
    """An uploaded image's mean cosine distance to its k nearest indexed items, and its
    percentile among the indexed items' own scores (each to its k nearest other items):
    a pipeline flags images unlike anything indexed by a high percentile."""
    data, options = await read_image_upload(request, rt, QcRequest)
    vector, _ = await rt.embed_image(data)
    try:
        reference = await rt.qc_reference.get(rt, options.k)
    except CatalogError as exc:  # fewer than two items: no score to compare with
        raise ServiceError(409, "too few items", str(exc)) from None
    hits = await rt.run(lambda: rt.searcher.search(vector, reference.k))
    if not hits:
        raise ServiceError(409, "too few items", "the index returned no neighbours")
    score = mean_distance([hit.score for hit in hits])
    return QcResponse(
        score=score,
        percentile=reference.percentile(score),
        k=len(hits),
        neighbors=[QcNeighbor(id=hit.id, cosine=hit.score) for hit in hits],
        reference_items=len(reference.scores),
        index_items=reference.index_items,
        index_version=reference.version,
        model_fingerprint=rt.searcher.loaded.manifest.model_fingerprint,
    )
