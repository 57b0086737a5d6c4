"""Errors as JSON ``{error, detail}`` with a 4xx code; one place maps domain errors.

No traceback, internal path or attribute value reaches a client: validation errors are
reduced to location and message (the offending input is not echoed back), and an
unexpected exception is a bare 500 logged on the server by type only
(:class:`service.middleware.CatchAll`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.errors import (
    CatalogError,
    ImageInputError,
    ImageRefused,
    MedsearchError,
    ModelMismatchError,
    TextInputError,
)
from indexer.imaging.types import Reason
from indexer.store.series_search import NoSeriesIndex


class ServiceError(Exception):
    """An error with its HTTP status, a short code and a message for the client."""

    def __init__(
        self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def error_response(
    status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _domain_status(exc: MedsearchError) -> tuple[int, str]:
    if isinstance(exc, ImageRefused):
        if exc.reason == Reason.TOO_LARGE:
            return 413, "image too large"
        return 422, "image not usable"
    if isinstance(exc, ImageInputError):
        return 422, "image not usable"
    if isinstance(exc, TextInputError):
        return 422, "text not usable"
    if isinstance(exc, ModelMismatchError):
        return 409, "model mismatch"
    if isinstance(exc, CatalogError):
        return 404, "not found"
    if isinstance(exc, NoSeriesIndex):
        return 409, "no series index"
    return 400, "bad request"


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(MedsearchError)
    async def _domain(_: Request, exc: MedsearchError) -> JSONResponse:
        status, error = _domain_status(exc)
        return error_response(status, error, str(exc)[:500])

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:200]}
            for e in exc.errors()[:20]
        ]
        return error_response(422, "invalid request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, str(exc.detail)[:200], None, headers)
