"""ASGI middleware: a request-body size limit, the JSON checks of
:mod:`service.json_limits` (both before any parsing), request metrics, and the last
word on an unexpected exception."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.json_limits import JsonRefused, check_json
from service.metrics import Metrics

logger = logging.getLogger(__name__)
access = logging.getLogger("service.access")

# HTTP's methods (RFC 9110, PATCH): any other token a client sends counts as "other", so
# that made-up methods cannot add label values (series) to the metrics without end
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


@dataclass(frozen=True)
class _Refusal:
    status: int
    error: str
    detail: str
    retry: bool = False  # with Retry-After: try again shortly


class _Refused(Exception):
    def __init__(self, refusal: _Refusal) -> None:
        super().__init__(refusal.error)
        self.refusal = refusal


async def _reply(
    send: Send,
    status: int,
    error: str,
    detail: str | None,
    *,
    close: bool = True,
    retry: bool = False,
) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if close:  # the rest of the body is not read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    if retry:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyBudget:
    """The request-body bytes held by all requests at once (JSON bodies are read whole,
    multipart parts spooled to ``/tmp``): the size limit bounds one body, this bounds many.
    Used from the event loop only."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.used = capacity, 0

    def take(self, size: int) -> bool:
        if self.used + size > self.capacity:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class BodyLimit:
    """Every request body bounded, before the app reads it:

    - 413 for a declared Content-Length over ``max_bytes``, or a body (chunked) that grows
      past it;
    - 503 with ``Retry-After`` when the bodies of the requests in flight would hold more
      than the :class:`BodyBudget` (counted as declared, or as the bytes come);
    - 408 when a client stops sending its body for ``idle_s`` (the request and its spooled
      parts are let go).

    A refused body fails the next ``receive()``. Whatever the app makes of that failure
    (FastAPI answers 400 to a JSON body it could not read, the route a 422 to a multipart
    body), the answer is the refusal, unless a response had already started.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, budget: BodyBudget, idle_s: float) -> None:
        self.app, self.max_bytes, self.budget, self.idle_s = app, max_bytes, budget, idle_s
        self.too_large = _Refusal(
            413, "request too large", f"the request body is limited to {max_bytes} bytes"
        )
        self.no_room = _Refusal(
            503, "overloaded", "too many request bodies in flight; retry shortly", retry=True
        )
        self.too_slow = _Refusal(
            408, "request timeout", f"no part of the request body came for {idle_s:g} s"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held = 0  # of the budget, given back when the request ends

        def hold(size: int) -> bool:
            nonlocal held
            if size <= held:
                return True
            if not self.budget.take(size - held):
                return False
            held = size
            return True

        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _reply(send, 400, "invalid Content-Length", "not a number")
                return
            first = self.too_large if size > self.max_bytes else None
            if first is None and not hold(size):
                first = self.no_room
            if first is not None:
                await _reply(send, first.status, first.error, first.detail, retry=first.retry)
                self.budget.give(held)
                return
        seen = 0
        refused: _Refusal | None = None
        started = answered = complete = False

        async def limited() -> Message:
            nonlocal seen, refused, complete
            if refused is not None:
                raise _Refused(refused)
            if complete:  # the app waits for the client to leave, as long as it likes
                return await receive()
            try:  # not wait_for, which may drop a cancellation on Python 3.11
                async with asyncio.timeout(self.idle_s):
                    message = await receive()
            except TimeoutError:
                refused = self.too_slow
                raise _Refused(refused) from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = self.too_large
                elif not hold(seen):
                    refused = self.no_room
                if refused is not None:
                    raise _Refused(refused)
            return message

        async def answer() -> None:
            nonlocal started, answered
            started = answered = True
            assert refused is not None
            await _reply(send, refused.status, refused.error, refused.detail, retry=refused.retry)

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:  # the rest of the app's own answer to the failed read
                return
            if refused is not None and not started:
                await answer()
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except _Refused:
            if not started:
                await answer()
        finally:
            self.budget.give(held)


def parsed_as_json(scope: Scope) -> bool:
    """FastAPI parses a body as JSON without a Content-Type, or with ``application/json``
    or ``application/*+json``."""
    ctype = next((v for k, v in scope.get("headers") or [] if k == b"content-type"), b"")
    if not ctype:
        return True
    main, _, sub = ctype.split(b";", 1)[0].strip().lower().partition(b"/")
    return main == b"application" and (sub == b"json" or sub.endswith(b"+json"))


class JsonLimits:
    """415 for a JSON body that is not UTF-8, 422 for one with a lone surrogate or nested
    deeper than ``max_depth``: before a parser reads it (:func:`~service.json_limits.check_json`).

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
            check_json(body, self.max_depth)
        except JsonRefused as exc:
            await _reply(send, exc.status, exc.error, str(exc), close=False)
            return
        pending: Message | None = {"type": "http.request", "body": body, "more_body": False}

        async def replay() -> Message:
            nonlocal pending
            if pending is None:
                return await receive()
            message, pending = pending, None
            return message

        await self.app(scope, replay, send)


class RequestRecord:
    """What is kept of every request: its metrics, and one access-log line (logger
    ``service.access``, INFO) with the client's address, the method, the route's template,
    the status and the time taken. Never the path or the query string a client sent: they
    can hold what a user searched for (``source_prefix=.../<patient ID>/``), and they are
    the client's text, of any length. Replaces uvicorn's own access log."""

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
            seconds = time.perf_counter() - started
            name = route_name(scope)
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            self.metrics.requests.labels(name, method, str(status["code"])).inc()
            self.metrics.latency.labels(name).observe(seconds)
            client = (scope.get("client") or ("-", 0))[0]
            access.info("%s %s %s %d %.1f ms", client, method, name, status["code"], seconds * 1e3)


class HeadAsGet:
    """HEAD answered as GET is (RFC 9110: same status and headers, no body), on every GET
    route: FastAPI routes GET only, so ``HEAD /healthz`` from an uptime check was a 405.
    The app sees a GET in a copy of the scope; the server, which keeps the original, sends
    no body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


def route_name(scope: Scope) -> str:
    """The route's template (``/v1/items/{item_id}``), never the path a client sent; also
    for a request that a middleware refused before it was routed."""
    route: Any = scope.get("route")
    if route is None and scope.get("app") is not None:
        route = next((r for r in scope["app"].routes if r.matches(scope)[0] == Match.FULL), None)
    return getattr(route, "path", None) or "unmatched"


class CatchAll:
    """A 500 for an exception no handler took, logged by its type and route only.

    Outermost of the app's own middleware: the exception stops here. Past this point,
    Starlette would answer and then raise it again to the server, which logs its
    traceback (values from the request in it) and drops the connection, so that a
    client's next request on that connection failed too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:  # noqa: BLE001 - the last word: logged, answered
            logger.error("unexpected %s on %s", type(exc).__name__, route_name(scope))
            if not started:  # the server keeps the connection if the request was read
                await _reply(send, 500, "internal error", None, close=False)
