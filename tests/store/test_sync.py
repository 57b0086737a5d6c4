"""The published index follows the catalog: IVF above the threshold, compression with exact
re-ranking, incremental versions, and readers that keep searching across publications."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from indexer.store.catalog import Catalog, ModelBinding, NewItem, catalog_url
from indexer.store.index_params import EXACT_BELOW
from indexer.store.searcher import Searcher
from indexer.store.sync import sync_index

DIM = 16
BINDING = ModelBinding("b" * 64, DIM, "reference", "viewer-v1")


def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, DIM))
    x = centres[rng.integers(0, 64, n)] + 0.6 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _fill(catalog: Catalog, vectors: np.ndarray, start: int) -> None:
    fields = {"sha256": "0" * 64, "size": 1, "format": "png", "width": 1, "height": 1}
    for lo in range(0, len(vectors), 5000):
        chunk = vectors[lo : lo + 5000]
        items = [
            NewItem(f"sha256:{start + lo + i}", f"file:///{start + lo + i}", v, dict(fields))
            for i, v in enumerate(chunk)
        ]
        catalog.add_batch(None, items, [])


@pytest.fixture()
def catalog(tmp_path: Path) -> Catalog:
    cat = Catalog.open(catalog_url(tmp_path))
    cat.bind_model(BINDING)
    yield cat  # type: ignore[misc]
    cat.close()


@pytest.mark.slow
def test_ivf_and_compressed_index_from_the_catalog(catalog: Catalog, tmp_path: Path) -> None:
    vectors = _clustered(EXACT_BELOW + 4000, seed=1)
    _fill(catalog, vectors, 0)
    manifest = sync_index(catalog, tmp_path, BINDING)
    assert manifest["facts"]["kind"] == "ivf_flat"
    assert manifest["facts"]["recall_at_10"] >= 0.95
    searcher = Searcher(tmp_path, catalog)
    rng = np.random.default_rng(2)
    for row in rng.choice(len(vectors), 20, replace=False):
        hits = searcher.search(vectors[row], 5)
        assert hits[0].id == row + 1  # catalog ids start at 1
    manifest = sync_index(catalog, tmp_path, BINDING, rebuild=True, compress="sq8")
    assert manifest["facts"]["kind"] == "ivf_sq8" and manifest["facts"]["recall_at_10"] >= 0.95
    assert searcher.reload_if_changed()
    for row in rng.choice(len(vectors), 20, replace=False):
        hits = searcher.search(vectors[row], 5)
        assert hits[0].id == row + 1
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)  # exact, re-ranked


def test_incremental_versions_while_a_reader_searches(catalog: Catalog, tmp_path: Path) -> None:
    vectors = _clustered(3000, seed=3)
    _fill(catalog, vectors[:1000], 0)
    sync_index(catalog, tmp_path, BINDING)
    errors: list[BaseException] = []
    searches = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal searches
        reader_catalog = Catalog.open(catalog_url(tmp_path))
        try:
            searcher = Searcher(tmp_path, reader_catalog)
            while not stop.is_set():
                try:
                    searcher.reload_if_changed()
                    hits = searcher.search(vectors[5], 3)
                    assert hits and hits[0].id == 6
                    searches += 1
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    errors.append(exc)
        finally:
            reader_catalog.close()

    thread = threading.Thread(target=reader)
    thread.start()
    versions = set()
    for step in range(1, 5):
        _fill(catalog, vectors[step * 500 : step * 500 + 500], step * 500 + 1000)
        versions.add(sync_index(catalog, tmp_path, BINDING)["version"])
    stop.set()
    thread.join(timeout=60)
    assert not errors, errors[:3]
    assert len(versions) == 4 and searches > 10
