"""ASGI middleware: a request-body size limit, a JSON nesting limit (both before any
parsing), and request metrics."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.json_limits import JsonTooDeep, check_json_depth
from service.metrics import Metrics


class _TooLarge(Exception):
    pass


async def _reply(send: Send, status: int, error: str, detail: str, *, close: bool = True) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json")]
    if close:  # the rest of the body is not read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """413 for a declared Content-Length over the limit, or a body (chunked) that grows past it.

    A body that grows past the limit fails the next ``receive()``. Whatever the app makes
    of that failure (FastAPI answers 400 to a JSON body it could not read, the route a 422
    to a multipart body), the answer is this 413, unless a response had already started.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        detail = f"the request body is limited to {self.max_bytes} bytes"
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await _reply(send, 400, "invalid Content-Length", "not a number")
                return
            if too_big:
                await _reply(send, 413, "request too large", detail)
                return
        seen = 0
        over = started = answered = False

        async def limited() -> Message:
            nonlocal seen, over
            if over:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise _TooLarge
            return message

        async def answer_413() -> None:
            nonlocal started, answered
            started = answered = True
            await _reply(send, 413, "request too large", detail)

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:  # the rest of the app's own answer to the failed read
                return
            if over and not started:
                await answer_413()
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except _TooLarge:
            if not started:
                await answer_413()


def parsed_as_json(scope: Scope) -> bool:
    """FastAPI parses a body as JSON without a Content-Type, or with ``application/json``
    or ``application/*+json``."""
    ctype = next((v for k, v in scope.get("headers") or [] if k == b"content-type"), b"")
    if not ctype:
        return True
    main, _, sub = ctype.split(b";", 1)[0].strip().lower().partition(b"/")
    return main == b"application" and (sub == b"json" or sub.endswith(b"+json"))


class JsonDepthLimit:
    """422 for a JSON body nested deeper than ``max_depth``, before a parser recurses into it.

    Only bodies that FastAPI would parse as JSON are read here: whole, as FastAPI reads
    them, then handed on as one message. Multipart and other bodies stream through
    untouched. Installed inside :class:`BodyLimit`, so the read is bounded.
    """

    def __init__(self, app: ASGIApp, max_depth: int) -> None:
        self.app, self.max_depth = app, max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not parsed_as_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body: no one to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        try:
            check_json_depth(body, self.max_depth)
        except JsonTooDeep as exc:
            await _reply(send, 422, "JSON too deeply nested", str(exc), close=False)
            return
        pending: Message | None = {"type": "http.request", "body": body, "more_body": False}

        async def replay() -> Message:
            nonlocal pending
            if pending is None:
                return await receive()
            message, pending = pending, None
            return message

        await self.app(scope, replay, send)


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}
        started = time.perf_counter()

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route: Any = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(name, scope.get("method", ""), str(status["code"])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)
