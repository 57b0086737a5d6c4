"""Issue 17 (items 2, 6, 7), through the real entry points: the CLI and a live server.

- the bind check decides the addresses the way the server will bind them (``--host ''``
  is every interface, not loopback);
- JSON nested past the depth limit is a 422, never a RecursionError and a 500;
- a chunked body over the size limit is a 413 on every route, JSON and multipart.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from indexer.pipeline.runner import BuildReport
from service.app import create_app
from service.json_limits import JsonTooDeep, check_json_depth, json_depth
from tests.service.conftest import KEY, TEST_MODEL, settings_for
from tests.service.live import free_port, serve

ROOT = Path(__file__).parents[2]
MAX_BODY = 1 << 20


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (32, 32), 128).save(buf, format="PNG")
    return buf.getvalue()


def _error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert "Traceback" not in r.text and ".py" not in r.text
    return body  # type: ignore[no-any-return]


# --- the depth scan itself ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("", 0),
        ("1", 0),
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('["[[[[", "{{{{\\"[[["]', 1),  # brackets inside strings, an escaped quote
        ('"\\\\"' + "[]", 1),  # an escaped backslash ends the string
        ("[" * 40 + "]" * 40 + "[[]]", 40),
    ],
)
def test_json_depth(text: str, depth: int) -> None:
    assert json_depth(text.encode()) == depth
    assert json_depth(text) == depth


def test_depth_limit() -> None:
    check_json_depth("[" * 32 + "]" * 32, 32)
    with pytest.raises(JsonTooDeep, match="32"):
        check_json_depth("[" * 33 + "]" * 33, 32)
    with pytest.raises(JsonTooDeep):  # the chunked scan carries the depth across chunks
        check_json_depth(b"[" * 3_000_000, 32)


# --- the live server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(built_index: tuple[Path, BuildReport]) -> Iterator[str]:
    app = create_app(settings_for(built_index[0], max_body_bytes=MAX_BODY))
    with serve(app) as base:
        yield base


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


JSON_ROUTES = {
    "/v1/search/text": lambda inner: f'{{"text": "ct", "k": {inner}}}',
    "/v1/search/image": lambda inner: f'{{"image": "aGk=", "filters": {inner}}}',
    "/v1/search/dicom": lambda inner: f'{{"study_uid": "1.2", "k": {inner}}}',
    "/v1/classify": lambda inner: f'{{"image": "aGk=", "labels": {inner}}}',
    "/score": lambda inner: f'{{"input_data": {{"columns": ["text"], "data": {inner}}}}}',
    "/v1/embed": lambda inner: f'{{"input_data": {inner}}}',
}


@pytest.mark.slow
@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("path", sorted(JSON_ROUTES))
def test_deep_json_body_is_422(live: str, path: str, depth: int) -> None:
    body = JSON_ROUTES[path](_nested(depth)).encode()
    for ctype in ("application/json", "application/vnd.medsearch+json", None):
        headers = {"content-type": ctype} if ctype else {}  # no type: FastAPI reads JSON
        r = httpx.post(f"{live}{path}", content=body, headers=headers, timeout=30)
        assert "depth" in str(_error(r, 422)["detail"])
        assert httpx.get(f"{live}/healthz", timeout=5).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("body", ["[]", "1", '"' + "[" * 100 + '"'])
def test_json_within_the_limit_reaches_the_route(live: str, body: str) -> None:
    r = httpx.post(
        f"{live}/v1/search/text", content=body, headers={"content-type": "application/json"}
    )
    assert _error(r, 422)["error"] == "invalid request"  # pydantic's answer, not the scan's
    r = httpx.post(f"{live}/v1/search/text", json={"text": "ct [[[[", "k": 2})
    assert r.status_code == 200, r.text


@pytest.mark.slow
@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deep_multipart_options_are_422(live: str, depth: int) -> None:
    options = '{"k": 3, "filters": ' + _nested(depth) + "}"
    r = httpx.post(
        f"{live}/v1/search/image",
        files={"file": ("q.png", _png(), "image/png")},
        data={"options": options},
        timeout=30,
    )
    body = _error(r, 422)
    assert body["error"] == "invalid options" and "depth" in str(body["detail"])
    assert httpx.get(f"{live}/healthz", timeout=5).status_code == 200
    r = httpx.post(
        f"{live}/v1/search/image",
        files={"file": ("q.png", _png(), "image/png")},
        data={"options": json.dumps({"k": 2})},
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 2


def _chunks(total: int, head: bytes = b"", chunk: int = 1 << 20) -> Iterator[bytes]:
    yield head
    block = b"A" * chunk
    for _ in range(total // chunk):
        yield block


@pytest.mark.slow
@pytest.mark.parametrize("route", ["multipart image", "json image", "json text"])
def test_chunked_body_over_the_limit_is_413(live: str, route: str) -> None:
    if route == "multipart image":
        path, ctype = "/v1/search/image", "multipart/form-data; boundary=xyzzy"
        head = b'--xyzzy\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        head += b"Content-Type: image/png\r\n\r\n"
    else:
        path = "/v1/search/image" if route == "json image" else "/v1/search/text"
        ctype, head = "application/json", b'{"image": "'
    started = time.monotonic()
    r = httpx.post(
        f"{live}{path}",
        content=_chunks(40 << 20, head),  # an iterator: sent chunked, no Content-Length
        headers={"content-type": ctype},
        timeout=30,
    )
    body = _error(r, 413)
    assert body["error"] == "request too large" and str(MAX_BODY) in str(body["detail"])
    assert time.monotonic() - started < 5
    assert httpx.get(f"{live}/healthz", timeout=5).status_code == 200


@pytest.mark.slow
def test_chunked_body_within_the_limit_is_served(live: str) -> None:
    def parts() -> Iterator[bytes]:
        yield b'{"text": "ct",'
        yield b' "k": 2}'

    r = httpx.post(
        f"{live}/v1/search/text", content=parts(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text


# --- the CLI's bind check ----------------------------------------------------------------


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSEARCH_")}
    env.update(extra)
    return env


def _serve_cmd(index_dir: Path, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "service",
        "serve",
        "--index",
        str(index_dir),
        "--model",
        str(TEST_MODEL),
        "--host",
        host,
        "--port",
        str(port),
    ]


def _listening(port: int) -> bool:
    for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as s:
            s.settimeout(1)
            try:
                s.connect((addr, port))
                return True
            except OSError:
                continue
    return False


@pytest.mark.slow
@pytest.mark.parametrize("host", ["", "0", "0.0.0.0", "::", "no-such-host.invalid"])
def test_cli_refuses_an_open_bind_without_keys(
    built_index: tuple[Path, BuildReport], host: str
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        _serve_cmd(built_index[0], host, port),
        cwd=ROOT,
        env=_cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        listening = _listening(port)
        proc.kill()
        proc.communicate()
        pytest.fail(f"--host {host!r} was not refused (listening: {listening})")
    assert proc.returncode == 2, err
    assert "error:" in err and "Traceback" not in err
    expected = "cannot resolve" if host.endswith(".invalid") else "without API keys"
    assert expected in err, err
    assert not _listening(port)


def _wait_ready(proc: subprocess.Popen[str], url: str, headers: dict[str, str]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            status = httpx.get(url, headers=headers, timeout=2).status_code
        except httpx.HTTPError:
            status = 0
        if status not in (0, 503):
            return status
        time.sleep(0.2)
    raise AssertionError("the server did not answer")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("host", "keys", "status"),
    [("localhost", None, 200), ("127.0.0.1", None, 200), ("", [KEY], 401)],
)
def test_cli_serves_a_safe_bind(
    built_index: tuple[Path, BuildReport], host: str, keys: list[str] | None, status: int
) -> None:
    port = free_port()
    env = _cli_env(MEDSEARCH_API_KEYS=json.dumps(keys)) if keys else _cli_env()
    proc = subprocess.Popen(
        _serve_cmd(built_index[0], host, port),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert _wait_ready(proc, f"http://127.0.0.1:{port}/readyz", {}) == status
        if keys:
            good = {"Authorization": f"Bearer {keys[0]}"}
            assert _wait_ready(proc, f"http://127.0.0.1:{port}/readyz", good) == 200
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
