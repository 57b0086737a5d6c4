"""Liveness, readiness (model loaded and self-tested, index loaded) and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import RuntimeDep
from service.errors import ServiceError
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"description": "not ready"}})
async def readyz(request: Request) -> Health:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ServiceError(503, "not ready", "the model or the index is not loaded")
    manifest = runtime.searcher.loaded.manifest
    store = runtime.searcher.rerank_store
    return Health(
        status="ready",
        index_version=manifest.version,
        items=int(runtime.searcher.loaded.index.ntotal),
        model_fingerprint=runtime.encoder.fingerprint,
        thumbnail_policy=runtime.settings.thumbnail_policy.value,
        rerank_store=runtime.settings.rerank_store,
        rerank_vectors_held=store.size if store is not None else 0,
        rerank_store_full=store.full if store is not None else False,
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(rt: RuntimeDep) -> Response:
    """Prometheus text format."""
    rt.metrics.queue_depth.labels("image").set(rt.served.image_batcher.depth)
    rt.metrics.queue_depth.labels("text").set(rt.served.text_batcher.depth)
    return Response(rt.metrics.render(), media_type=CONTENT_TYPE_LATEST)
