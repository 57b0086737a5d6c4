"""``min_score``, paging and the combined query on the live server over HTTP (issue 15):
thresholds are respected, pages continue the order without overlap, stale and foreign
tokens are refused, a negative moves the results away, the formula is the documented one."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from indexer.pipeline.runner import BuildReport
from service.app import create_app
from tests.service.conftest import KEY, settings_for
from tests.service.live import serve

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def index_copy(
    built_index: tuple[Path, BuildReport], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    index_dir = tmp_path_factory.mktemp("query-features") / "index"
    shutil.copytree(built_index[0], index_dir)  # this module publishes a new version
    return index_dir


@pytest.fixture(scope="module")
def http(index_copy: Path) -> Iterator[httpx.Client]:
    settings = settings_for(index_copy, api_keys=[KEY], index_poll_s=0.1)
    with (
        serve(create_app(settings), headers=AUTH) as base,
        httpx.Client(base_url=base, headers=AUTH, timeout=60) as client,
    ):
        yield client


def _post(http: httpx.Client, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


def _ids(body: dict[str, Any]) -> list[int]:
    return [int(hit["id"]) for hit in body["results"]]


def test_min_score_on_every_route(http: httpx.Client) -> None:
    everything = _post(http, "/v1/search/text", {"text": "mr brain", "k": 40})["results"]
    threshold = everything[len(everything) // 2]["score"]
    kept = _post(http, "/v1/search/text", {"text": "mr brain", "k": 40, "min_score": threshold})
    assert kept["results"] and all(h["score"] >= threshold for h in kept["results"])
    assert len(kept["results"]) < len(everything)
    assert _post(http, "/v1/search/text", {"text": "mr brain", "min_score": 1.0})["results"] == []
    item = everything[0]["id"]
    near = http.get(f"/v1/items/{item}/neighbors", params={"k": 50, "min_score": 0.99}).json()
    assert all(h["score"] >= 0.99 for h in near["results"])
    combined = _post(
        http, "/v1/search", {"queries": [{"item_id": item}], "k": 50, "min_score": 0.99}
    )
    assert _ids(combined) == _ids(near)
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    files = {"file": ("CT_small.dcm", Path(path).read_bytes())}
    options = '{"k": 50, "min_score": 0.999}'
    image = http.post("/v1/search/image", files=files, data={"options": options}).json()
    assert image["results"] and all(h["score"] >= 0.999 for h in image["results"])


def _pages(http: httpx.Client, path: str, body: dict[str, Any]) -> list[list[int]]:
    pages, token = [], None
    while True:
        page = _post(http, path, {**body, **({"page_token": token} if token else {})})
        pages.append(_ids(page))
        token = page["next_page_token"]
        if token is None:
            return pages


def test_pages_continue_the_order_without_overlap(http: httpx.Client) -> None:
    body = {"text": "ct chest", "k": 7}
    pages = _pages(http, "/v1/search/text", body)
    assert len(pages) > 3 and all(len(p) == 7 for p in pages[:-1])
    flat = [i for page in pages for i in page]
    assert len(flat) == len(set(flat))  # no overlap
    whole = _post(http, "/v1/search/text", {"text": "ct chest", "k": len(flat) + 5})
    assert flat == _ids(whole)  # the same order as one big page, and nothing missing
    for size in range(2, 10):  # equal scores (identical images) fall on some page cuts
        sized = _pages(http, "/v1/search/text", {**body, "k": size})
        assert [i for page in sized for i in page] == flat, size
    grouped = _pages(http, "/v1/search/text", {**body, "group_by": "series", "k": 3})
    flat_grouped = [i for page in grouped for i in page]
    assert len(flat_grouped) == len(set(flat_grouped))
    combined = _pages(http, "/v1/search", {"queries": [{"text": "ct chest"}], "k": 9})
    assert [i for page in combined for i in page] == flat


def test_foreign_and_broken_tokens_are_refused(http: httpx.Client) -> None:
    token = _post(http, "/v1/search/text", {"text": "ct chest", "k": 5})["next_page_token"]
    assert token
    other = http.post("/v1/search/text", json={"text": "mr knee", "page_token": token})
    assert other.status_code == 422 and "another query" in other.json()["detail"]
    broken = http.post("/v1/search/text", json={"text": "ct chest", "page_token": "xyz" + token})
    assert broken.status_code == 422
    # another page size continues the same query
    assert (
        http.post(
            "/v1/search/text", json={"text": "ct chest", "k": 3, "page_token": token}
        ).status_code
        == 200
    )


def test_combined_query_formula_and_negatives(http: httpx.Client) -> None:
    def vector(body: dict[str, Any]) -> np.ndarray:
        found = _post(http, "/v1/search", {**body, "k": 1, "return_vectors": True})
        return np.asarray(found["query_vector"], dtype=np.float64)

    text = np.asarray(
        _post(http, "/v1/search/text", {"text": "mr brain", "return_vectors": True})["query_vector"]
    )
    assert abs(np.linalg.norm(text) - 1) < 1e-5
    top = _post(http, "/v1/search/text", {"text": "mr brain", "k": 1})["results"][0]["id"]
    item = vector({"queries": [{"item_id": top}]})
    combined = vector(
        {"queries": [{"text": "mr brain", "weight": 2.0}], "negative": [{"item_id": top}]}
    )
    expected = 2 * text - item
    np.testing.assert_allclose(combined, expected / np.linalg.norm(expected), atol=1e-5)
    assert float(combined @ item) < float(text @ item)  # moved away from the negative
    away = _post(
        http, "/v1/search",
        {"queries": [{"text": "mr brain", "weight": 2.0}], "negative": [{"item_id": top}], "k": 5},
    )  # fmt: skip
    assert top not in _ids(away)[:1]
    raw = vector({"queries": [{"vector": [float(x) * 3 for x in text]}]})  # normalised by us
    np.testing.assert_allclose(raw, text, atol=1e-5)


def test_more_like_these_leaves_the_examples_out(http: httpx.Client) -> None:
    first = _ids(_post(http, "/v1/search/text", {"text": "ct", "k": 2}))
    found = _post(http, "/v1/search", {"queries": [{"item_id": i} for i in first], "k": 10})
    assert found["results"] and not set(first) & set(_ids(found))


@pytest.mark.parametrize(
    "body",
    [
        {"queries": []},
        {"queries": [{"text": "ct", "item_id": 1}]},
        {"queries": [{}]},
        {"queries": [{"vector": [1.0, 2.0]}]},  # wrong dimension
        {"queries": [{"vector": [0.0] * 32}]},  # no direction (the test model is 32-d)
        {"queries": [{"text": "ct"}], "negative": [{"text": "ct"}]},  # cancels out
        {"queries": [{"text": "ct", "weight": 0}]},
        {"queries": [{"image": "%%%"}]},
    ],
)
def test_bad_combined_queries_get_a_4xx(http: httpx.Client, body: dict[str, Any]) -> None:
    response = http.post("/v1/search", json=body)
    assert response.status_code == 422, response.text
    missing = http.post("/v1/search", json={"queries": [{"item_id": 2**40}]})
    assert missing.status_code == 404


def test_a_token_from_an_older_index_version_is_refused(
    http: httpx.Client, index_copy: Path
) -> None:
    token = _post(http, "/v1/search/text", {"text": "ct chest", "k": 5})["next_page_token"]
    before = http.get("/readyz").json()["index_version"]
    subprocess.run(
        [sys.executable, "-m", "indexer.cli", "index", "rebuild", "--index", str(index_copy)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while http.get("/readyz").json()["index_version"] == before:
        assert time.monotonic() < deadline, "the new version was not picked up"
        time.sleep(0.1)
    stale = http.post("/v1/search/text", json={"text": "ct chest", "k": 5, "page_token": token})
    assert stale.status_code == 410
    assert "search again" in stale.json()["detail"]
