"""The FastAPI application: lifespan, middleware, routes, errors, OpenAPI."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from service import errors
from service.auth import RequireKey
from service.config import EngineSettings, ServiceSettings
from service.deps import require_key
from service.metrics import Metrics
from service.middleware import (
    BodyBudget,
    BodyLimit,
    CatchAll,
    HeadAsGet,
    JsonLimits,
    RequestRecord,
)
from service.routes import azure, classify, combined, dicom, health, items, qc, search, series, web
from service.runtime import Runtime
from service.schemas import ErrorBody, ImageSearchRequest
from service.series_schemas import SeriesSearchRequest
from service.thumbnails import RESPONSE_HEADERS

logger = logging.getLogger(__name__)


def _error_responses(*, with_auth: bool) -> dict[int | str, dict[str, Any]]:
    """The error answers every route documents; 401 only where keys are required."""
    codes = [400, 404, 409, 413, 415, 422, 502, 503] + ([401] if with_auth else [])
    return {code: {"model": ErrorBody} for code in sorted(codes)}


def create_app(settings: ServiceSettings, engine: EngineSettings | None = None) -> FastAPI:
    """An app for ``settings`` and ``engine`` (default: built from them and the environment
    now); the model and index load in the lifespan."""
    engine = engine or EngineSettings.for_service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, engine)
        app.state.runtime = runtime
        app.state.metrics = runtime.metrics
        runtime.start()
        logger.info(
            "serving index %s (%d items) with model %s",
            runtime.searcher.loaded.manifest.version,
            runtime.searcher.loaded.index.ntotal,
            runtime.encoder.fingerprint[:16],
        )
        try:
            yield
        finally:
            app.state.runtime = None
            await runtime.stop()

    api_keys = settings.key_values()
    app = FastAPI(
        title="medsearch",
        version="0.1.0",
        summary="Similarity search for medical images (MedImageInsight, FAISS)",
        lifespan=lifespan,
        responses=_error_responses(with_auth=bool(api_keys)),
    )
    app.state.api_keys = api_keys
    app.state.runtime = None
    metrics_holder = Metrics()  # replaced by the runtime's in the lifespan
    app.state.metrics = metrics_holder
    errors.install(app)
    # The key check, and with it the bearer scheme in the OpenAPI document, only where keys
    # are configured: an open server that declared authentication would break the contract.
    auth = [Depends(require_key)] if api_keys else []
    for module in (search, combined, series, dicom, items, azure, classify, qc, health):
        app.include_router(module.router, dependencies=auth)
    app.include_router(web.router)  # the page itself holds no data: no key needed
    app.mount("/static", web.static_files(), name="static")
    app.add_middleware(HeadAsGet)  # innermost: the router sees a GET
    # added last is outermost: the size limit bounds what the depth check reads
    app.add_middleware(JsonLimits, max_depth=settings.max_json_depth)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        budget=BodyBudget(settings.body_budget_mb << 20),
        idle_s=settings.body_timeout_s,
    )
    if api_keys:  # before any body is read: a client without a key learns nothing
        app.add_middleware(RequireKey, keys=api_keys)
    if settings.cors_origins:  # outside the limits: a viewer can read every answer, 413s too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After", *RESPONSE_HEADERS],
        )
    app.add_middleware(_RecordProxy)  # every request, refused ones too (401, 413, ...)
    app.add_middleware(CatchAll)  # outermost: no exception reaches the server
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


class _RecordProxy:
    """Every request recorded (:class:`~service.middleware.RequestRecord`), its metrics
    into whatever registry the app holds now (the runtime's)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        state = scope.get("app").state if scope.get("app") is not None else None
        metrics = getattr(state, "metrics", None) if state is not None else None
        if metrics is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await RequestRecord(self.app, metrics)(scope, receive, send)


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ImageSearchRequest, SeriesSearchRequest):  # bodies the routes read themselves
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in body.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components[model.__name__] = body
    app.openapi_schema = schema
    return schema
