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
    assert manifest["facts"]["kind"] == "ivf_sq8"  # the default: codes + exact re-ranking
    assert manifest["facts"]["recall_at_10"] >= 0.95
    searcher = Searcher(tmp_path, catalog, rerank="memory")
    rng = np.random.default_rng(2)
    for row in rng.choice(len(vectors), 20, replace=False):
        hits = searcher.search(vectors[row], 5)
        assert hits[0].id == row + 1  # catalog ids start at 1
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)  # exact, re-ranked
    manifest = sync_index(catalog, tmp_path, BINDING, rebuild=True, compress="none")
    assert manifest["facts"]["kind"] == "ivf_flat" and manifest["facts"]["recall_at_10"] >= 0.95
    assert searcher.reload_if_changed()
    for row in rng.choice(len(vectors), 20, replace=False):
        hits = searcher.search(vectors[row], 5)
        assert hits[0].id == row + 1


@pytest.mark.slow
def test_rerank_store_in_memory_answers_as_the_catalog_does(
    catalog: Catalog, tmp_path: Path
) -> None:
    """The same hits and scores whether candidates are re-ranked with vectors held in
    memory or read from the catalog: before the store is filled, once it is, and for rows
    added after it was filled (read from the catalog until the next version tops it up)."""
    vectors = _clustered(EXACT_BELOW + 3000, seed=3)
    _fill(catalog, vectors, 0)
    sync_index(catalog, tmp_path, BINDING)
    memory = Searcher(tmp_path, catalog, rerank="memory")
    plain = Searcher(tmp_path, catalog)
    assert plain.rerank_store is None and memory.rerank_store is not None
    queries = _clustered(30, seed=4)

    def same() -> None:
        for q in queries:
            a, b = memory.search(q, 10), plain.search(q, 10)
            assert [(h.id, h.score) for h in a] == [(h.id, h.score) for h in b]

    same()  # possibly while the background fill runs
    store = memory.rerank_store
    assert store.wait(60) and store.size == len(vectors)
    same()
    # the QC reference (POST /v1/qc) re-ranks with the same vectors, wherever they come from
    from indexer.store.outliers import reference_scores

    held = reference_scores(
        memory.loaded, catalog, 10, sample=200, vectors_by_id=memory.rerank_vectors
    )
    read = reference_scores(memory.loaded, catalog, 10, sample=200)
    np.testing.assert_array_equal(held.scores, read.scores)
    more = _clustered(500, seed=5)
    _fill(catalog, more, len(vectors))
    sync_index(catalog, tmp_path, BINDING)  # incremental: same IVF, new rows
    assert memory.reload_if_changed() and plain.reload_if_changed()
    store.wait(60)
    assert store.size == len(vectors) + len(more) and store.fills == 2
    for row in range(0, 500, 50):  # the new rows find themselves, with exact scores
        hits = memory.search(more[row], 3)
        assert hits[0].id == len(vectors) + row + 1
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    same()
    ids = np.array([1, len(vectors) + 1], dtype=np.int64)
    np.testing.assert_array_equal(store.vectors(ids), np.stack([vectors[0], more[0]]))


def test_rerank_store_reads_missing_ids_from_the_catalog(catalog: Catalog) -> None:
    from indexer.errors import CatalogError
    from indexer.store.rerank_store import RerankStore

    vectors = _clustered(300, seed=6)
    _fill(catalog, vectors[:200], 0)
    store = RerankStore(catalog, DIM)
    assert store.fill() == 200 and store.size == 200
    _fill(catalog, vectors[200:], 200)  # not held yet
    got = store.vectors(np.array([250, 3, 201], dtype=np.int64))
    np.testing.assert_array_equal(got, vectors[[249, 2, 200]])
    assert store.fill() == 100 and store.size == 300  # grown past its first capacity
    np.testing.assert_array_equal(store.vectors(np.arange(1, 301)), vectors)
    with pytest.raises(CatalogError, match="no embedding"):
        store.vectors(np.array([999], dtype=np.int64))


def test_rerank_store_stops_at_its_memory_limit(catalog: Catalog) -> None:
    from indexer.store.rerank_store import RerankStore

    vectors = _clustered(300, seed=8)
    _fill(catalog, vectors[:200], 0)
    limit = 120 * (4 * DIM + 8)
    store = RerankStore(catalog, DIM, max_bytes=limit)
    assert store.fill() == 120 and store.size == 120 and store.full
    _fill(catalog, vectors[200:], 200)
    assert store.fill() == 0 and store.size == 120  # later rows stay in the catalog
    held = store._ids.nbytes + store._vectors.nbytes
    assert held <= limit  # no spare room past the limit either
    ids = np.array([300, 1, 120, 121, 250], dtype=np.int64)
    np.testing.assert_array_equal(store.vectors(ids), vectors[ids - 1])


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
