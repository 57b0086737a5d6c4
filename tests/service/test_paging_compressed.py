"""Paging and filters on a compressed IVF index (``ivf_sq8`` with exact re-ranking) over
the live service: deeper pages re-rank larger candidate pools, and the keyset cursor in
the token still keeps pages in order without overlap; a filter that follows the clusters
(every MR item sits in the even clusters) still finds its items."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from indexer.encoders.manifest import read_manifest
from indexer.imaging.types import RENDER_POLICY
from indexer.store.catalog import Catalog, ModelBinding, NewItem, catalog_url
from indexer.store.index_params import EXACT_BELOW
from indexer.store.sync import index_store, sync_index
from service.app import create_app
from tests.service.conftest import TEST_MODEL, settings_for
from tests.service.live import serve

pytestmark = pytest.mark.slow
N = EXACT_BELOW + 2000  # an IVF, not an exact index


def build_compressed(index_dir: Path, url: str, n_items: int = N) -> None:
    """A catalog at ``url`` of ``n_items`` clustered vectors of the test model's dimension
    (4 items a series, CT and MR alternating) and its default index, IVF-SQ8."""
    manifest = read_manifest(TEST_MODEL)
    dim = manifest.embedding_dim
    binding = ModelBinding(manifest.fingerprint, dim, manifest.preprocessing.default, RENDER_POLICY)
    catalog = Catalog.open(url)
    try:
        catalog.bind_model(binding)
        rng = np.random.default_rng(7)
        centres = rng.standard_normal((50, dim))
        run = catalog.start_run("build", [])
        for start in range(0, n_items, 2000):
            items = []
            for n in range(start, min(start + 2000, n_items)):
                v = centres[n % 50] + 0.4 * rng.standard_normal(dim)
                fields = {
                    "format": "png", "width": 1, "height": 1, "sha256": f"{n:064d}", "size": 1,
                    "modality": "CT" if n % 2 else "MR",
                    "series_instance_uid": f"1.2.3.{n // 4}",  # 4 items a series
                }  # fmt: skip
                vector = (v / np.linalg.norm(v)).astype(np.float32)
                items.append(NewItem(f"sha256:{n}", f"file:///x/{n}.png", vector, fields))
            catalog.add_batch(run, items, [])
        sync_index(catalog, index_dir, binding)  # the default: IVF-SQ8 above EXACT_BELOW
    finally:
        catalog.close()
    manifest_now = index_store(index_dir).current()
    assert manifest_now is not None and manifest_now.facts.kind == "ivf_sq8"
    assert manifest_now.facts.needs_rerank


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    index_dir = tmp_path_factory.mktemp("compressed")
    build_compressed(index_dir, catalog_url(index_dir))
    return index_dir


@pytest.fixture(scope="module")
def http(compressed: Path) -> Iterator[httpx.Client]:
    with (
        serve(create_app(settings_for(compressed))) as base,
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        yield client


def _pages(http: httpx.Client, body: dict[str, Any], pages: int) -> list[dict[str, Any]]:
    out, token = [], None
    for _ in range(pages):
        response = http.post(
            "/v1/search", json={**body, **({"page_token": token} if token else {})}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        out += page["results"]
        token = page["next_page_token"]
        if token is None:
            break
    return out


@pytest.mark.parametrize("filters", [None, {"modality": ["MR"]}])
def test_pages_on_a_compressed_index_keep_order_and_never_overlap(
    http: httpx.Client, filters: dict[str, list[str]] | None
) -> None:
    rng = np.random.default_rng(1)
    for _ in range(3):
        query = rng.standard_normal(32).tolist()
        body: dict[str, Any] = {"queries": [{"vector": query}], "k": 9, "filters": filters}
        hits = _pages(http, body, pages=20)
        ids = [h["id"] for h in hits]
        assert len(ids) == 180 and len(set(ids)) == len(ids)  # no overlap
        order = [(-h["score"], h["id"]) for h in hits]
        assert order == sorted(order)  # the order continues across pages
        if filters:
            assert {h["metadata"]["modality"] for h in hits} == {"MR"}


@pytest.mark.parametrize("collapse", [False, True])
def test_grouped_pages_on_a_compressed_index_never_repeat_a_series(
    http: httpx.Client, collapse: bool
) -> None:
    """With ``group_by`` (and near-duplicate folding) each page's groups follow the last
    group shown, by its best hit: deeper pages look at more candidates, yet no series
    comes back and the order continues."""
    check_grouped_pages(http, collapse)


def check_grouped_pages(http: httpx.Client, collapse: bool) -> None:
    rng = np.random.default_rng(3)
    for _ in range(2):
        query = rng.standard_normal(32).tolist()
        body: dict[str, Any] = {"queries": [{"vector": query}], "k": 7, "group_by": "series"}
        if collapse:
            body["collapse"] = "near_duplicates"
        hits = _pages(http, body, pages=15)
        series = [h["series_instance_uid"] for h in hits]
        assert len(series) == 105 and len(set(series)) == len(series)  # no repeats
        order = [(-h["score"], h["id"]) for h in hits]
        assert order == sorted(order)


def test_rerank_vectors_are_held_in_memory_and_scores_stay_exact(
    http: httpx.Client, compressed: Path
) -> None:
    """The service's default (MEDSEARCH_RERANK_STORE=memory) fills the float32 store in the
    background; the scores it returns equal the exact cosine with the catalog's vectors."""
    check_rerank_store(http, catalog_url(compressed))


def check_rerank_store(http: httpx.Client, url: str) -> None:
    deadline = time.monotonic() + 60
    while (ready := http.get("/readyz").json())["rerank_vectors_held"] < ready["items"]:
        assert time.monotonic() < deadline, ready
        time.sleep(0.2)
    assert ready["rerank_store"] == "memory" and ready["rerank_vectors_held"] == ready["items"]
    query = np.random.default_rng(5).standard_normal(32)
    query /= np.linalg.norm(query)
    response = http.post("/v1/search", json={"queries": [{"vector": query.tolist()}], "k": 10})
    hits = response.json()["results"]
    catalog = Catalog.open(url)
    try:
        stored = catalog.embeddings(h["id"] for h in hits)
    finally:
        catalog.close()
    for hit in hits:
        assert hit["score"] == pytest.approx(float(stored[hit["id"]] @ query), abs=1e-5)


def test_a_full_rerank_store_holds_its_limit_and_scores_stay_exact(
    compressed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MEDSEARCH_RERANK_STORE_MAX_GB as a deployment sets it: the store stops at the rows
    that fit (before, it grew to 4 bytes x dim for every item: 40 GB at 10^7 x 1024), says
    so in /readyz, and the rows past it are re-ranked from the catalog with exact scores."""
    dim = read_manifest(TEST_MODEL).embedding_dim
    fits = 5000
    monkeypatch.setenv("MEDSEARCH_RERANK_STORE_MAX_GB", str(fits * (4 * dim + 8) / 1e9))
    with (
        serve(create_app(settings_for(compressed))) as base,
        httpx.Client(base_url=base, timeout=60) as http,
    ):
        deadline = time.monotonic() + 60
        while not (ready := http.get("/readyz").json())["rerank_store_full"]:
            assert time.monotonic() < deadline, ready
            time.sleep(0.2)
        assert ready["rerank_vectors_held"] == fits < ready["items"]
        catalog = Catalog.open(catalog_url(compressed))
        seen: list[int] = []
        try:
            rng = np.random.default_rng(11)
            for _ in range(5):
                query = rng.standard_normal(dim)
                query /= np.linalg.norm(query)
                body = {"queries": [{"vector": query.tolist()}], "k": 20}
                hits = http.post("/v1/search", json=body).json()["results"]
                stored = catalog.embeddings(h["id"] for h in hits)
                for hit in hits:
                    assert hit["score"] == pytest.approx(float(stored[hit["id"]] @ query), abs=1e-5)
                seen += [h["id"] for h in hits]
        finally:
            catalog.close()
        assert min(seen) <= fits < max(seen)  # held rows and rows past the limit
