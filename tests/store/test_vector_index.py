"""The FAISS vector index and its published versions, with real FAISS on clustered data."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import pytest

from indexer.errors import (
    IndexCorruptError,
    IndexMissingError,
    ModelMismatchError,
    VectorIndexError,
)
from indexer.store.index_files import IndexStore
from indexer.store.index_params import choose_nlist
from indexer.store.vector_index import BuiltIndex, add, build_index, remove, rerank, search

DIM = 64
N = 6_000
EXACT_BELOW = 1_000  # small, so that N gets an IVF
Vectors = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]


def clustered(n: int, seed: int, dim: int = DIM) -> Vectors:
    """A Gaussian mixture on the sphere with shared low-rank structure and noise.

    Neighbours are not trivially separable: a point's 10th neighbour is only ~0.1 less
    similar than its first, and neighbours straddle cluster borders.
    """
    centres_rng = np.random.default_rng(1234)  # same mixture for every sample
    centres = centres_rng.standard_normal((40, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = np.linalg.qr(centres_rng.standard_normal((dim, 8)))[0]
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(centres), n)
    x: npt.NDArray[np.float64] = centres[labels] + 0.35 * rng.standard_normal((n, 8)) @ basis.T
    x += rng.standard_normal((n, dim)) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[Ids, Vectors]:
    ids = np.arange(N, dtype=np.int64) * 3 + 7  # catalog ids: not 0..n-1
    return ids, clustered(N, seed=0)


@pytest.fixture(scope="module")
def ivf(data: tuple[Ids, Vectors]) -> BuiltIndex:
    return build_index(*data, exact_below=EXACT_BELOW, compress="none")


@pytest.fixture(scope="module")
def flat(data: tuple[Ids, Vectors]) -> BuiltIndex:
    return build_index(*data)


def exact(ids: Ids, x: Vectors, queries: Vectors, k: int, allowed: Ids | None = None) -> list[Ids]:
    """Brute force: ids of the k best, score desc then id asc."""
    if allowed is not None:
        keep = np.isin(ids, allowed)
        ids, x = ids[keep], x[keep]
    scores = queries @ x.T
    return [ids[np.lexsort((ids, -row))][:k] for row in scores]


def recall(found: list[Ids], truth: list[Ids]) -> float:
    hits = sum(np.intersect1d(f, t).size for f, t in zip(found, truth, strict=True))
    return hits / sum(t.size for t in truth)


def lookup(ids: Ids, x: Vectors) -> Callable[[Ids], Vectors]:
    rows = {int(i): r for r, i in enumerate(ids)}
    return lambda wanted: x[[rows[int(i)] for i in wanted]]


# -- building ----------------------------------------------------------------------------


def test_flat_below_threshold(flat: BuiltIndex) -> None:
    assert flat.facts.kind == "flat"
    assert isinstance(flat.index, faiss.IndexIDMap2)
    assert flat.index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert (flat.facts.recall_at_10, flat.facts.nlist, flat.facts.count) == (1.0, 0, N)


def test_ivf_above_threshold(ivf: BuiltIndex) -> None:
    facts = ivf.facts
    assert facts.kind == "ivf_flat"
    assert isinstance(ivf.index, faiss.IndexIVFFlat)
    assert ivf.index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert facts.nlist == choose_nlist(N) == ivf.index.nlist
    assert 1 <= facts.nprobe < facts.nlist  # tuning did better than exhaustive
    assert ivf.index.nprobe == facts.nprobe  # stored on the index: survives write/read
    assert facts.recall_at_10 >= 0.95
    assert facts.recall_queries == 1000
    assert ivf.index.ntotal == N


def test_build_is_deterministic(data: tuple[Ids, Vectors], ivf: BuiltIndex) -> None:
    again = build_index(*data, exact_below=EXACT_BELOW, compress="none")
    assert again.facts.model_dump(exclude={"build_seconds"}) == ivf.facts.model_dump(
        exclude={"build_seconds"}
    )


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_self_search_finds_self_first(
    kind: str, data: tuple[Ids, Vectors], flat: BuiltIndex, ivf: BuiltIndex
) -> None:
    ids, x = data
    built = flat if kind == "flat" else ivf
    rows = np.arange(0, N, 97)
    scores, found = search(built.index, x[rows], 10)
    for row, s, f in zip(rows, scores, found, strict=True):
        assert f[0] == ids[row]
        assert s[0] == pytest.approx(1.0, abs=1e-5)
        assert len(f) == 10 and np.all(np.diff(s) <= 0)


def test_tuned_recall_holds_on_held_out_queries(data: tuple[Ids, Vectors], ivf: BuiltIndex) -> None:
    ids, x = data
    queries = clustered(500, seed=99)  # same mixture, not in the index
    _, found = search(ivf.index, queries, 10)
    held_out = recall(found, exact(ids, x, queries, 10))
    # the stored figure is a mean over 1000 sampled queries (std. error ~0.005)
    assert held_out >= ivf.facts.recall_at_10 - 0.015
    assert held_out >= 0.94


def test_flat_search_is_exact(data: tuple[Ids, Vectors], flat: BuiltIndex) -> None:
    ids, x = data
    queries = clustered(50, seed=5)
    _, found = search(flat.index, queries, 10)
    for f, t in zip(found, exact(ids, x, queries, 10), strict=True):
        np.testing.assert_array_equal(f, t)


def test_ties_are_ordered_by_id() -> None:
    x = clustered(50, seed=3)
    dup = np.repeat(x[:1], 4, axis=0)
    ids = np.array([40, 10, 30, 20], dtype=np.int64)
    built = build_index(np.concatenate([ids, np.arange(100, 150)]), np.concatenate([dup, x]))
    _, found = search(built.index, dup[:1], 4)
    np.testing.assert_array_equal(found[0], [10, 20, 30, 40])


def test_fewer_results_than_k_are_dropped_not_padded() -> None:
    x = clustered(5, seed=4)
    built = build_index(np.arange(5), x)
    scores, found = search(built.index, x[:2], 10)
    assert [len(f) for f in found] == [5, 5] and [len(s) for s in scores] == [5, 5]
    assert all((f >= 0).all() for f in found)


# -- filters -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.parametrize("share", [0.1, 0.01])
def test_filter_returns_only_allowed_ids_ranked_like_brute_force(
    kind: str, share: float, data: tuple[Ids, Vectors], flat: BuiltIndex, ivf: BuiltIndex
) -> None:
    ids, x = data
    built = flat if kind == "flat" else ivf
    rng = np.random.default_rng(11)
    allowed = np.sort(rng.choice(ids, size=int(N * share), replace=False))
    queries = clustered(40, seed=12)
    truth = exact(ids, x, queries, 10, allowed=allowed)
    _, found = search(built.index, queries, 10, allowed_ids=allowed)
    assert all(np.isin(f, allowed).all() and len(f) == 10 for f in found)
    if kind == "flat":
        for f, t in zip(found, truth, strict=True):
            np.testing.assert_array_equal(f, t)
    else:
        # nprobe widens with the filter's selectivity: recall as good as unfiltered
        assert recall(found, truth) >= 0.95
        _, exhaustive = search(
            built.index, queries, 10, nprobe=ivf.facts.nlist, allowed_ids=allowed
        )
        for f, t in zip(exhaustive, truth, strict=True):
            np.testing.assert_array_equal(f, t)


def test_filter_on_external_ids_not_positions(flat: BuiltIndex, data: tuple[Ids, Vectors]) -> None:
    _, x = data
    # ids are 3*i + 7: of the positions 0..7, only 7 is also an id
    _, found = search(flat.index, x[:3], 5, allowed_ids=np.arange(8))
    assert [f.tolist() for f in found] == [[7], [7], [7]]
    _, none = search(flat.index, x[:3], 5, allowed_ids=np.array([], dtype=np.int64))
    assert all(f.size == 0 for f in none)


# -- updates -----------------------------------------------------------------------------


@pytest.mark.parametrize("exact_below", [20_000, EXACT_BELOW])
def test_remove_then_search_never_returns_removed(
    exact_below: int, data: tuple[Ids, Vectors]
) -> None:
    ids, x = data
    built = build_index(ids, x, exact_below=exact_below)
    gone = ids[::3]
    assert remove(built.index, np.concatenate([gone, [10**9]])) == gone.size
    assert built.index.ntotal == N - gone.size
    assert remove(built.index, gone) == 0
    _, found = search(built.index, x[::50], 20)
    assert not np.isin(np.concatenate(found), gone).any()
    assert all(f.size == 20 for f in found)


@pytest.mark.parametrize("exact_below", [20_000, EXACT_BELOW])
def test_add_then_search_finds_new_ones(exact_below: int, data: tuple[Ids, Vectors]) -> None:
    ids, x = data
    built = build_index(ids[:5000], x[:5000], exact_below=exact_below)
    add(built.index, ids[5000:], x[5000:])
    assert built.index.ntotal == N
    _, found = search(built.index, x[5000::37], 1)
    np.testing.assert_array_equal(np.concatenate(found), ids[5000::37])
    add(built.index, ids[:10], x[10:20])  # an existing id is replaced, not duplicated
    assert built.index.ntotal == N
    scores, found = search(built.index, x[10:20], 2)
    # each vector is now stored twice: under its own id and a replaced one, equal scores
    for i, (s, f) in enumerate(zip(scores, found, strict=True)):
        assert s[0] == s[1]
        assert f.tolist() == [ids[i], ids[10 + i]]  # ties: by id


@pytest.mark.parametrize(
    ("ids", "vectors", "message"),
    [
        (np.arange(2), np.full((2, DIM), np.nan, np.float32), "NaN"),
        (np.arange(2), np.ones((2, DIM), np.float32), "normalised"),
        (np.arange(2), clustered(2, 1, dim=DIM + 1), "shape"),
        (np.array([1, 1]), clustered(2, 1), "unique"),
        (np.array([-1, 2]), clustered(2, 1), ">= 0"),
        (np.arange(3), clustered(2, 1), "ids"),
    ],
)
def test_add_refuses_bad_input(ids: Ids, vectors: Vectors, message: str, flat: BuiltIndex) -> None:
    before = flat.index.ntotal
    with pytest.raises(VectorIndexError, match=message):
        add(flat.index, ids, vectors)
    assert flat.index.ntotal == before


def test_search_refuses_bad_queries(flat: BuiltIndex) -> None:
    with pytest.raises(VectorIndexError, match="shape"):
        search(flat.index, clustered(1, 1, dim=DIM * 2), 5)
    with pytest.raises(VectorIndexError, match="infinite"):
        search(flat.index, np.full((1, DIM), np.inf, np.float32), 5)
    with pytest.raises(VectorIndexError, match="k must"):
        search(flat.index, clustered(1, 1), 0)


# -- compressed codes + exact re-ranking -------------------------------------------------


@pytest.mark.parametrize("compress", ["sq8", "pq"])
def test_compressed_with_rerank_reaches_target(compress: Any, data: tuple[Ids, Vectors]) -> None:
    ids, x = data
    built = build_index(ids, x, exact_below=EXACT_BELOW, compress=compress)
    facts = built.facts
    assert facts.kind == f"ivf_{compress}" and facts.needs_rerank
    assert facts.recall_at_10 >= 0.95 and facts.rerank_factor > 1
    vectors_by_id = lookup(ids, x)
    queries = clustered(300, seed=21)
    _, candidates = search(built.index, queries, 10 * facts.rerank_factor)
    found = [rerank(q, c, vectors_by_id, 10)[1] for q, c in zip(queries, candidates, strict=True)]
    assert recall(found, exact(ids, x, queries, 10)) >= 0.94


def test_default_is_sq8_and_a_flat_index_keeps_it_for_later(
    data: tuple[Ids, Vectors], flat: BuiltIndex
) -> None:
    ids, x = data
    built = build_index(ids[:2000], x[:2000], exact_below=EXACT_BELOW)
    assert built.facts.kind == "ivf_sq8" and built.facts.compress == "sq8"
    assert built.facts.quantizer == "flat" and built.index.parallel_mode == 1
    assert flat.facts.kind == "flat" and flat.facts.compress == "sq8"  # when it outgrows flat
    explicit = build_index(ids[:2000], x[:2000], exact_below=EXACT_BELOW, compress="none")
    assert explicit.facts.kind == "ivf_flat" and explicit.facts.compress == "none"


def test_hnsw_quantizer_for_many_lists(tmp_path: Path, data: tuple[Ids, Vectors]) -> None:
    """Past ``hnsw_quantizer_from`` lists the coarse quantizer is an HNSW graph: recall is
    tuned as for a flat one, it survives publish and load, filters still work."""
    ids, x = data
    built = build_index(ids, x, exact_below=EXACT_BELOW, hnsw_quantizer_from=16)
    assert built.facts.quantizer == "hnsw" and built.facts.nlist >= 16
    assert isinstance(faiss.downcast_index(built.index.quantizer), faiss.IndexHNSWFlat)
    assert built.facts.recall_at_10 >= 0.95
    store = IndexStore(tmp_path)
    store.publish(built, EXTRA)
    loaded = store.load().index
    assert isinstance(faiss.downcast_index(loaded.quantizer), faiss.IndexHNSWFlat)
    assert loaded.parallel_mode == 1  # not stored by FAISS: set again at load
    vectors_by_id = lookup(ids, x)
    queries = clustered(300, seed=23)
    _, candidates = search(loaded, queries, 10 * built.facts.rerank_factor)
    found = [rerank(q, c, vectors_by_id, 10)[1] for q, c in zip(queries, candidates, strict=True)]
    assert recall(found, exact(ids, x, queries, 10)) >= 0.94
    allowed = ids[::5]
    _, only = search(loaded, queries[:20], 10, allowed_ids=allowed)
    assert all(np.isin(f, allowed).all() and len(f) == 10 for f in only)


def test_rerank_orders_exactly() -> None:
    x = clustered(20, seed=8)
    ids = np.arange(100, 120, dtype=np.int64)
    scores, best = rerank(x[0], np.concatenate([ids, [-1]]), lookup(ids, x), 5)
    np.testing.assert_array_equal(best, exact(ids, x, x[:1], 5)[0])
    assert best[0] == 100 and np.all(np.diff(scores) <= 0)


# -- published versions ------------------------------------------------------------------

EXTRA = {
    "catalog_high_water": 3 * N + 4,
    "model_fingerprint": "f" * 64,
    "recipe": "reference",
    "render_policy": "percentile",
}


def test_publish_load_round_trip(
    tmp_path: Path, ivf: BuiltIndex, data: tuple[Ids, Vectors]
) -> None:
    store = IndexStore(tmp_path)
    assert store.current() is None
    with pytest.raises(IndexMissingError, match="medsearch index build"):
        store.load()
    manifest = store.publish(ivf, EXTRA)
    assert store.current() == manifest
    assert (tmp_path / "CURRENT").read_text().strip() == manifest.version
    assert manifest.version.startswith("v000001-")
    assert (manifest.count, manifest.embedding_dim, manifest.facts) == (N, DIM, ivf.facts)
    entry = manifest.files["index.faiss"]
    assert entry.size == (tmp_path / "versions" / manifest.version / "index.faiss").stat().st_size
    loaded = store.load()
    assert loaded.manifest == manifest
    assert loaded.index.nprobe == ivf.facts.nprobe
    _, x = data
    before = search(ivf.index, x[:20], 10)
    after = search(loaded.index, x[:20], 10)
    for a, b in zip(before[1], after[1], strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ModelMismatchError):
        store.load(model_fingerprint="0" * 64)
    assert store.publish(ivf, EXTRA).version.startswith("v000002-")


def test_publish_checks_extra(tmp_path: Path, flat: BuiltIndex) -> None:
    store = IndexStore(tmp_path)
    with pytest.raises(ValueError, match="count"):
        store.publish(flat, {**EXTRA, "count": N + 1})
    with pytest.raises(ValueError):
        store.publish(flat, {**EXTRA, "version": "v999999-20000101T000000Z"})
    with pytest.raises(ValueError):
        store.publish(flat, {k: v for k, v in EXTRA.items() if k != "recipe"})
    assert store.current() is None
    assert list((tmp_path / "versions").iterdir()) == []  # nothing half written left over


def _published(tmp_path: Path, built: BuiltIndex) -> tuple[IndexStore, Path]:
    store = IndexStore(tmp_path)
    version = store.publish(built, EXTRA).version
    return store, tmp_path / "versions" / version / "index.faiss"


def test_truncated_index_is_corrupt(tmp_path: Path, flat: BuiltIndex) -> None:
    store, path = _published(tmp_path, flat)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(IndexCorruptError, match="medsearch index rebuild"):
        store.load()
    with pytest.raises(IndexCorruptError):
        store.load(verify=False)  # the size check still runs


def test_altered_index_fails_sha256(tmp_path: Path, flat: BuiltIndex) -> None:
    store, path = _published(tmp_path, flat)
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size - 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IndexCorruptError, match="sha256"):
        store.load()
    assert store.load(verify=False).index.ntotal == N  # what verify=False is for


def test_current_pointing_nowhere_is_missing(tmp_path: Path, flat: BuiltIndex) -> None:
    store, _ = _published(tmp_path, flat)
    (tmp_path / "CURRENT").write_text("v000099-20260101T000000Z\n")
    with pytest.raises(IndexMissingError, match="medsearch index rebuild"):
        store.load()
    with pytest.raises(IndexMissingError):
        store.current()


@pytest.mark.parametrize("pointer", ["../x", "../../etc/passwd", "/tmp/x", "v1", ""])
def test_current_outside_versions_is_refused(
    tmp_path: Path, flat: BuiltIndex, pointer: str
) -> None:
    store, _ = _published(tmp_path, flat)
    (tmp_path / "x").mkdir()
    (tmp_path / "CURRENT").write_text(pointer)
    with pytest.raises(VectorIndexError):
        store.load()


def test_old_versions_are_pruned(tmp_path: Path, flat: BuiltIndex) -> None:
    store = IndexStore(tmp_path, keep=2)
    names = [store.publish(flat, EXTRA).version for _ in range(5)]
    assert store.versions() == names[-2:]
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == names[-2:]
    (tmp_path / "versions" / ".tmp-v000006-20260101T000000Z").mkdir()  # a crashed publish
    names.append(store.publish(flat, EXTRA).version)
    assert names[-1].startswith("v000006-")
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == names[-2:]


def test_readers_keep_working_while_versions_are_published(
    tmp_path: Path, flat: BuiltIndex, data: tuple[Ids, Vectors]
) -> None:
    ids, x = data
    store = IndexStore(tmp_path, keep=2)
    store.publish(flat, EXTRA)
    first = store.load()
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                loaded = store.load()
                seen.add(loaded.manifest.version)
                _, found = search(loaded.index, x[:1], 1)
                assert found[0][0] == ids[0]
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(6):
            store.publish(flat, EXTRA)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert len(seen) >= 2
    # the first version's files are gone; the index loaded from them still works
    assert first.manifest.version not in store.versions()
    _, found = search(first.index, x[:1], 1)
    assert found[0][0] == ids[0]


def test_load_retries_when_its_version_is_pruned_meanwhile(
    tmp_path: Path, flat: BuiltIndex
) -> None:
    class StaleFirstRead(IndexStore):
        """Reads CURRENT once before a publish moved it on and pruned that version."""

        stale: str | None = None

        def _pointer(self) -> str | None:
            stale, self.stale = self.stale, None
            return stale or super()._pointer()

    store = StaleFirstRead(tmp_path, keep=2)
    names = [store.publish(flat, EXTRA).version for _ in range(3)]
    assert names[0] not in store.versions()
    store.stale = names[0]
    assert store.load().manifest.version == names[-1]
    store.stale = names[0]
    current = store.current()
    assert current is not None and current.version == names[-1]
