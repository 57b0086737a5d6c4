"""Serving behaviour over HTTP: a full queue answers 503 with Retry-After at once and
the server goes on; the viewer's origin (and only it) may call the API from a browser;
text and label embeddings are cached."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from indexer.pipeline.runner import BuildReport
from service.app import create_app
from tests.service.conftest import KEY, settings_for
from tests.service.live import serve

pytestmark = pytest.mark.slow

VIEWER = "http://viewer.example:3000"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_a_full_queue_answers_503_fast_and_the_server_goes_on(
    built_index: tuple[Path, BuildReport],
) -> None:
    app = create_app(settings_for(built_index[0], queue_size=1, max_batch=1, batch_window_ms=0))
    with serve(app) as base:
        runtime = app.state.runtime
        release = threading.Event()
        runtime.text_pool.submit(release.wait, 30)  # the text encoder thread is busy
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(_text, base, "first query")  # taken by the batch worker
            _until(lambda: runtime.served.text_batcher.depth == 0 and _pending(runtime) >= 1)
            second = pool.submit(_text, base, "second query")  # fills the queue
            _until(lambda: runtime.served.text_batcher.depth == 1)
            started = time.monotonic()
            refused = _text(base, "third query")
            elapsed = time.monotonic() - started
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"] == "overloaded"
            assert elapsed < 2.0
            release.set()
            assert first.result(30).status_code == 200
            assert second.result(30).status_code == 200
        assert _text(base, "after the burst").status_code == 200


def _pending(runtime: Any) -> int:
    """Encoder runs waiting behind the blocker in the text thread."""
    return int(runtime.text_pool._work_queue.qsize())


def _text(base: str, text: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/search/text", json={"text": text, "k": 3}, timeout=60)


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


@pytest.fixture(scope="module")
def cors_client(built_index: tuple[Path, BuildReport]) -> Iterator[TestClient]:
    app = create_app(
        settings_for(built_index[0], api_keys=[KEY], cors_origins=[VIEWER], max_body_bytes=4096)
    )
    with TestClient(app) as c:
        yield c


def test_the_viewer_origin_may_call_the_api(cors_client: TestClient) -> None:
    preflight = cors_client.options(
        "/v1/search/text",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200  # no key on a preflight: browsers send none
    assert preflight.headers["access-control-allow-origin"] == VIEWER
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    r = cors_client.post(
        "/v1/search/text", json={"text": "ct", "k": 2}, headers={"Origin": VIEWER, **AUTH}
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == VIEWER
    # errors are readable by the viewer too: a wrong key, a body over the limit
    for response in (
        cors_client.post("/v1/search/text", json={"text": "ct"}, headers={"Origin": VIEWER}),
        cors_client.post(
            "/v1/search/text",
            content=b"x" * 8192,
            headers={"Origin": VIEWER, "content-type": "application/json", **AUTH},
        ),
    ):
        assert response.status_code in (401, 413)
        assert response.headers["access-control-allow-origin"] == VIEWER


def test_other_origins_are_not_allowed(cors_client: TestClient) -> None:
    evil = "http://elsewhere.example"
    preflight = cors_client.options(
        "/v1/search/text",
        headers={"Origin": evil, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    r = cors_client.post(
        "/v1/search/text", json={"text": "ct", "k": 2}, headers={"Origin": evil, **AUTH}
    )
    assert "access-control-allow-origin" not in r.headers


def test_text_and_label_embeddings_are_cached(client: TestClient) -> None:
    image = io.BytesIO()
    Image.new("L", (64, 48), 90).save(image, "PNG")
    classify = {"image": base64.b64encode(image.getvalue()).decode(), "labels": ["a z1", "b z2"]}

    def lookups() -> dict[str, float]:
        text = client.get("/metrics").text
        out = {"hit": 0.0, "miss": 0.0}
        for line in text.splitlines():
            if line.startswith("medsearch_text_cache_total{"):
                result = line.split('result="')[1].split('"')[0]
                out[result] = float(line.rsplit(" ", 1)[1])
        return out

    before = lookups()
    query = {"text": "a text never searched before 8c1f", "k": 3}
    a = client.post("/v1/search/text", json=query).json()
    b = client.post("/v1/search/text", json=query).json()
    assert a["results"] == b["results"]
    after = lookups()
    assert after["miss"] - before["miss"] == 1
    assert after["hit"] - before["hit"] == 1
    first = client.post("/v1/classify", json=classify)
    second = client.post("/v1/classify", json=classify)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    labels = lookups()
    assert labels["miss"] - after["miss"] == 2  # each label embedded once
    assert labels["hit"] - after["hit"] == 2
