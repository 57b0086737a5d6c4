"""Dependencies: the runtime from ``app.state``, and bearer-key authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import CHALLENGE, key_matches
from service.errors import ServiceError
from service.runtime import Runtime

_bearer = HTTPBearer(auto_error=False, description="an API key from MEDSEARCH_API_KEYS")


async def get_runtime(request: Request) -> AsyncIterator[Runtime]:
    """The runtime, bound to the generation (index, model) serving when the request came
    in, which stays open while the request runs (see :mod:`service.served`)."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ServiceError(503, "not ready", "the model or the index is not loaded")
    pinned = runtime.pinned()
    served = pinned.served
    served.requests += 1  # on the event loop: no lock needed
    try:
        yield pinned
    finally:
        served.requests -= 1


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the bearer token is one of the keys.

    ``create_app`` attaches this only when keys are configured: its ``HTTPBearer``
    dependency is what declares the bearer scheme in the OpenAPI document, so a server
    without keys declares no authentication at all.
    """
    keys: list[str] = request.app.state.api_keys
    if not keys:
        return
    given = credentials.credentials if credentials is not None else ""
    if not key_matches(given, keys):
        raise ServiceError(
            401,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key>)",
            {"WWW-Authenticate": CHALLENGE},
        )
