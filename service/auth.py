"""Bearer-key authentication, checked before anything reads the request.

:class:`RequireKey` (ASGI middleware) answers 401 to a request for a protected path
without one of ``MEDSEARCH_API_KEYS``, before any body is parsed: a client without a key
learns nothing, not even that its JSON is malformed. The route dependency
:func:`service.deps.require_key` checks the same keys again and is what declares the
bearer scheme in the OpenAPI document.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
OPEN_PREFIXES = ("/static/",)  # the search page: it holds no data
CHALLENGE = 'Bearer realm="medsearch"'


def key_matches(given: str, keys: Sequence[str]) -> bool:
    """Whether ``given`` is one of ``keys`` (compared in constant time)."""
    return any(secrets.compare_digest(given.encode(), key.encode()) for key in keys)


def bearer(header: str | None) -> str:
    scheme, _, token = (header or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class RequireKey:
    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app, self.keys = app, list(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path in OPEN_PATHS
            or path.startswith(OPEN_PREFIXES)
            or scope.get("method") == "OPTIONS"  # CORS preflight carries no credentials
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        given = bearer(headers.get(b"authorization", b"").decode("latin-1"))
        if key_matches(given, self.keys):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": "unauthorized",
                "detail": "a valid API key is required (Authorization: Bearer <key>)",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", CHALLENGE.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
