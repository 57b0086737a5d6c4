"""A hostile or careless client against a live server (the findings of an audit that
attacked one): every answer a 4xx with a message, nothing left behind for the next
request, nothing unbounded, nothing of the request in the log.

- a lone surrogate (``"\\ud800"``) anywhere in a JSON body or in multipart ``options``:
  422 (it was a 500 with a traceback, and the connection was dropped under the client's
  next request); JSON in UTF-16 or UTF-32: 415 (it went past the nesting check);
- an exception no handler takes: a bare 500, logged by type and route, the connection
  kept;
- made-up HTTP methods count as ``other`` in the metrics (each one was a new series);
- multipart parts the route does not declare, and ``options`` sent as a file: 422;
- forged page tokens (NaN or infinite scores, huge ids, a version with markup): 422;
- vectors of any scale have a direction (1e20s overflowed float32: "zero vector");
- a multi-image request that fails on one image runs none of its queued decodes;
- request bodies: all requests in flight hold at most MEDSEARCH_BODY_BUDGET_MB (503
  past it), a body that stops coming is a 408 after MEDSEARCH_BODY_TIMEOUT_S;
- the access log (``medsearch serve``) names the route, never the query string.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from indexer.pipeline.runner import BuildReport
from service.app import create_app
from tests.service.conftest import TEST_MODEL, settings_for
from tests.service.live import free_port, serve

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.slow


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(
            r.getMessage() + ("\nTraceback" if r.exc_info else "") for r in self.records
        )


@pytest.fixture(scope="module")
def logs(live: str) -> Iterator[_Records]:
    """What the server logs: uvicorn's loggers do not reach the root logger, and uvicorn
    sets their handlers when it starts (so this comes after the server)."""
    handler = _Records()
    names = ("uvicorn.error", "uvicorn", "service", "indexer")
    for name in names:
        logging.getLogger(name).addHandler(handler)
    yield handler
    for name in names:
        logging.getLogger(name).removeHandler(handler)


def _boom() -> None:
    raise RuntimeError("Doe^Archibald 77654033")  # values of a request, as a bug may raise


@pytest.fixture(scope="module")
def app(built_index: tuple[Path, BuildReport]) -> FastAPI:
    settings = settings_for(
        built_index[0], workers=1, max_body_bytes=5 << 20, body_budget_mb=8, body_timeout_s=1.5
    )
    app = create_app(settings)
    app.add_api_route("/test/boom", _boom, methods=["GET"])  # a route with a bug
    return app


@pytest.fixture(scope="module")
def live(app: FastAPI) -> Iterator[str]:
    with serve(app) as base:
        yield base


def _png(size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), 128).save(buf, format="PNG")
    return buf.getvalue()


def _refused(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body: dict[str, Any] = r.json()
    assert set(body) == {"error", "detail"}, body
    return body


SURROGATE_JSON = {  # route -> a JSON body with a lone surrogate escape
    "/v1/search/text": r'{"text": "ct", "filters": {"modality": ["\ud800"]}}',
    "/v1/search": r'{"queries": [{"text": "ct"}], "filters": {"labels": {"a": "\udc00"}}}',
    "/v1/classify": r'{"image": "aGk=", "labels": ["ok", "\ud83d"]}',
    "/score": r'{"input_data": {"columns": ["text"], "data": [["ct \udfff"]]}}',
}
SURROGATE_OPTIONS = {  # multipart route -> options with a lone surrogate escape
    "/v1/search/image": r'{"filters": {"labels": {"\ud800": "x"}}}',
    "/v1/search/series": r'{"filters": {"modality": ["\udbff"]}}',
}


@pytest.mark.parametrize("path", sorted(SURROGATE_JSON))
def test_a_lone_surrogate_in_json_is_422_and_the_connection_lives(
    live: str, logs: _Records, path: str
) -> None:
    with httpx.Client(base_url=live) as http:  # one connection, kept alive
        r = http.post(
            path, content=SURROGATE_JSON[path], headers={"content-type": "application/json"}
        )
        assert "surrogate" in _refused(r, 422)["detail"]
        assert http.post("/v1/search/text", json={"text": "ct", "k": 2}).status_code == 200
    assert "Traceback" not in logs.text() and "Exception in ASGI" not in logs.text()


@pytest.mark.parametrize("path", sorted(SURROGATE_OPTIONS))
def test_a_lone_surrogate_in_multipart_options_is_422(live: str, logs: _Records, path: str) -> None:
    with httpx.Client(base_url=live) as http:
        r = http.post(
            path,
            files={"file": ("q.png", _png(), "image/png")},
            data={"options": SURROGATE_OPTIONS[path]},
        )
        body = _refused(r, 422)
        assert body["error"] in ("invalid options", "invalid request") and "surrogate" in str(body)
        assert http.post("/v1/search/text", json={"text": "ct", "k": 2}).status_code == 200
    assert "Traceback" not in logs.text()


def test_a_valid_surrogate_pair_and_an_escaped_backslash_are_served(live: str) -> None:
    for text in (r"ct \ud83d\ude00", r"ct \\ud800"):  # an emoji; the six characters \ud800
        r = httpx.post(
            f"{live}/v1/search/text",
            content='{"text": "' + text + '", "k": 2}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32-be"])
def test_json_that_is_not_utf8_is_415(live: str, encoding: str) -> None:
    deep = '{"text": "ct", "pad": "\\"", "filters": ' + "[" * 40 + "]" * 40 + "}"
    for text in ('{"text": "ct", "k": 2}', deep):  # the deep one went past the depth check
        r = httpx.post(
            f"{live}/v1/search/text",
            content=text.encode(encoding),
            headers={"content-type": "application/json"},
        )
        body = _refused(r, 415)
        assert body["error"] == "unsupported JSON encoding" and encoding in body["detail"]


def test_an_unexpected_exception_is_a_bare_500_logged_by_type(live: str, logs: _Records) -> None:
    before = len(logs.records)
    port = int(live.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # one connection
        s.sendall(b"GET /test/boom?q=Doe HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _one_response(s)
        assert answer.startswith(b"HTTP/1.1 500 ") and b'"internal error"' in answer, answer
        assert b"Doe" not in answer
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the client goes on
        assert _one_response(s).startswith(b"HTTP/1.1 200 ")
    new = logs.records[before:]
    text = "\n".join(rec.getMessage() for rec in new)
    assert "unexpected RuntimeError on /test/boom" in text, text
    assert "Doe" not in text and "77654033" not in text
    assert not any(rec.exc_info for rec in new), "a traceback was logged"


def _one_response(s: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length, read off a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return data  # closed
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _request_series(metrics: str) -> int:
    return sum(1 for line in metrics.splitlines() if line.startswith("medsearch_requests_total"))


def test_made_up_methods_do_not_grow_the_metrics(live: str) -> None:
    port = int(live.rsplit(":", 1)[1])

    def raw(method: str) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"{method} / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            return s.recv(4096)

    raw("WARMUP")
    before = _request_series(httpx.get(f"{live}/metrics").text)
    for i in range(40):
        assert b" 405 " in raw(f"M{i:05d}{'X' * 200}").split(b"\r\n", 1)[0]
    metrics = httpx.get(f"{live}/metrics").text
    assert _request_series(metrics) <= before + 1  # the /metrics request itself, once
    assert 'method="other"' in metrics and "M00001" not in metrics


def test_undeclared_multipart_parts_and_options_as_a_file_are_422(live: str) -> None:
    png = ("q.png", _png(), "image/png")
    for path in ("/v1/search/image", "/v1/search/series"):
        r = httpx.post(f"{live}{path}", files={"file": png}, data={"option": '{"k": 1}'})
        assert "unknown part 'option'" in _refused(r, 422)["detail"]
        r = httpx.post(f"{live}{path}", files={"file": png, "options": ("o.json", b'{"k": 1}')})
        detail = str(_refused(r, 422)["detail"])  # one file at most on the image route
        assert "not a file" in detail or "Maximum number of files is 1" in detail, detail


def _forge(token: str, **fields: Any) -> str:
    raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw.update(fields)
    text = json.dumps(raw)  # NaN and Infinity as Python writes them
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_forged_page_tokens_are_refused(live: str) -> None:
    body = {"text": "ct", "k": 3}
    token = httpx.post(f"{live}/v1/search/text", json=body).json()["next_page_token"]
    assert token
    page2 = httpx.post(f"{live}/v1/search/text", json={**body, "page_token": token})
    assert page2.status_code == 200
    for forged in (
        {"s": math.nan},
        {"s": math.inf},
        {"i": 10**30},
        {"i": -1},
        {"v": "<script>alert(1)</script>"},
        {"v": "v" * 300},
    ):
        r = httpx.post(
            f"{live}/v1/search/text", json={**body, "page_token": _forge(token, **forged)}
        )
        detail = _refused(r, 422)
        assert "script" not in r.text and "vvvv" not in r.text, (forged, detail)


def test_vectors_of_any_scale_have_a_direction(live: str) -> None:
    dim = len(httpx.post(f"{live}/v1/embed", json=_azure_text()).json()["text_features"][0])
    signs = [1.0 if i % 3 else -0.5 for i in range(dim)]

    def ids(scale: float) -> list[int]:
        query = {"vector": [scale * s for s in signs]}
        r = httpx.post(f"{live}/v1/search", json={"queries": [query], "k": 5})
        assert r.status_code == 200, (scale, r.text)
        return [hit["id"] for hit in r.json()["results"]]

    expected = ids(1.0)
    for scale in (1e20, 1e300, 1e-23, 1e-300):
        assert ids(scale) == expected, scale
    r = httpx.post(f"{live}/v1/search", json={"queries": [{"vector": [0.0] * dim}]})
    assert "no direction" in _refused(r, 422)["detail"]


def _azure_text() -> dict[str, Any]:
    return {"input_data": {"columns": ["text"], "data": [["ct"]]}}


def test_a_failing_multi_image_request_runs_none_of_its_queued_decodes(
    app: FastAPI, live: str
) -> None:
    """Images decode one at a time here (one decoder worker): the first fails at once;
    before, the six large ones after it were all decoded (and embedded) anyway."""
    runtime = app.state.runtime
    decoded: list[int] = []
    decode = runtime.decoders.decode

    def counted(job: Any) -> Any:
        decoded.append(len(job.data or b""))
        return decode(job)

    runtime.decoders.decode = counted
    try:
        big = base64.b64encode(_png(4000)).decode()  # ~0.3 s to decode, a few KB
        bad = base64.b64encode(b"not an image at all").decode()
        rows = [[bad]] + [[big]] * 6
        r = httpx.post(
            f"{live}/score",
            json={"input_data": {"columns": ["image"], "data": rows}},
            timeout=60,
        )
        assert _refused(r, 422)["error"] == "image not usable"
        assert runtime.decode_budget.running == 0  # nothing of it still decoding
        assert len(decoded) <= 2, decoded  # the bad one, and one that had started
    finally:
        runtime.decoders.decode = decode
    good = [[base64.b64encode(_png(64)).decode()]] * 2
    r = httpx.post(f"{live}/score", json={"input_data": {"columns": ["image"], "data": good}})
    assert r.status_code == 200 and len(r.json()["image_features"]) == 2


def _stalled(port: int, length: int, body: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST /v1/search/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    s.sendall(head.encode() + body)
    return s


def _status(s: socket.socket) -> tuple[int, bytes]:
    """The status and the whole answer (the server closes the connection after it)."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_request_bodies_in_flight_are_bounded_and_stalled_ones_time_out(live: str) -> None:
    """Budget 8 MB, bodies up to 5 MB, 1.5 s without a byte of body: 408."""
    port = int(live.rsplit(":", 1)[1])
    first = _stalled(port, 4 << 20, b'{"text": ')  # holds 4 MB of the budget, sends no more
    try:
        time.sleep(0.3)
        second = _stalled(port, 5 << 20)  # 4 + 5 > 8
        status, data = _status(second)
        second.close()
        assert status == 503 and b"retry-after: 1" in data.lower(), data[:300]
        assert b"too many request bodies" in data
        status, data = _status(first)  # it sent nothing for 1.5 s
        assert status == 408 and b"request body" in data, data[:300]
    finally:
        first.close()
    # the budget is whole again: a 5 MB body is read (and refused by the route, not here)
    r = httpx.post(
        f"{live}/v1/search/text",
        content=b'{"text": "ct", "pad": "' + b"a" * ((5 << 20) - 64) + b'"}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 422 and r.json()["error"] == "invalid request", r.text[:200]
    assert httpx.post(f"{live}/v1/search/text", json={"text": "ct", "k": 1}).status_code == 200


def test_the_access_log_names_routes_never_query_strings(
    built_index: tuple[Path, BuildReport], tmp_path: Path
) -> None:
    """``medsearch serve`` as deployed: its own access log on stdout, one line a request."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSEARCH_")}
    cmd = [sys.executable, "-m", "service", "serve", "--index", str(built_index[0])]
    cmd += ["--model", str(TEST_MODEL), "--port", str(port)]
    err_path = tmp_path / "serve.log"
    with err_path.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=err, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            prefix = "file:///archive/Doe%5EJane/77654033/"
            r = httpx.get(f"{base}/v1/items/export?source_prefix={prefix}")
            assert r.status_code == 200
            assert httpx.get(f"{base}/v1/items/1?x=77654033").status_code == 200
            assert httpx.post(f"{base}/v1/search/text", content=b"{").status_code in (400, 422)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    log = err_path.read_text()
    assert "GET /v1/items/export 200" in log, log
    assert "GET /v1/items/{item_id} 200" in log, log
    assert "POST /v1/search/text 4" in log, log
    assert "77654033" not in log and "Doe" not in log and "Traceback" not in log


def test_head_is_answered_as_get_without_a_body(live: str) -> None:
    """Uptime checks send HEAD: it was a 405 on every route but /static."""
    for path in ("/healthz", "/readyz", "/v1/items/1", "/"):
        got, head = httpx.get(f"{live}{path}"), httpx.head(f"{live}{path}")
        assert head.status_code == got.status_code == 200, (path, head.status_code)
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]
    assert httpx.head(f"{live}/v1/search/text").status_code == 405  # a POST route
    assert httpx.head(f"{live}/v1/items/999999").status_code == 404
