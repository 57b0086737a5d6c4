"""The FAISS vector index: build (train, add, tune ``nprobe``), search, add, remove.

Inner product on L2-normalised vectors (cosine). Vector ids are catalog row ids.

- ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact, for small collections;
- ``ivf_flat``: ``IndexIVFFlat`` with an ``IndexFlatIP`` coarse quantizer trained by
  spherical k-means; ids are stored in the inverted lists (``add_with_ids``);
- ``ivf_sq8`` (the default above ``EXACT_BELOW``) / ``ivf_pq``: the same with compressed
  codes. Their scores are approximate: fetch ``k * facts.rerank_factor`` candidates and
  :func:`rerank` them exactly with the float32 vectors (the catalog's, held in memory by
  :class:`~indexer.store.rerank_store.RerankStore`).

Large IVFs (``nlist >= HNSW_QUANTIZER_FROM``) find their lists with an HNSW graph over the
centroids instead of comparing the query with every centroid. A single query scans its
probed lists on all of FAISS's threads (``parallel_mode`` 1, set by :func:`ready`): with
one query at a time, the default (threads over queries) leaves all but one core idle
(flat and SQ8 lists only: PQ lists recompute their tables per list that way).

``nprobe`` is measured at build time, not guessed: the smallest candidate
(:func:`~indexer.store.index_params.nprobe_candidates`) whose mean recall@10 against exact
search reaches the target on a seeded sample of the collection's own vectors, each query
leaving itself out (it is trivially its own nearest neighbour, which would inflate recall
by up to 0.1). The recall reached is recorded in :class:`BuildFacts`.

Searches are read-only and may run concurrently; :func:`add` and :func:`remove` mutate
the index and must not overlap with searches on the same object (update a loaded copy,
then publish it as a new version).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from indexer.errors import VectorIndexError
from indexer.store import index_params as params
from indexer.store.index_params import Compression, IndexKind

logger = logging.getLogger(__name__)

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]
Scores = npt.NDArray[np.float32]
VectorsById = Callable[[Ids], Vectors]

RECALL_K = 10
#: Largest accepted deviation of a vector's L2 norm from 1.
NORM_TOLERANCE = 1e-3
ADD_CHUNK = 65_536
#: Candidates fetched per result before exact re-ranking, by kind: SQ8 codes lose little
#: (1 byte per dimension), 8-bit PQ codes (1 bit per dimension) much more.
RERANK_FACTOR: dict[IndexKind, int] = {"flat": 1, "ivf_flat": 1, "ivf_sq8": 2, "ivf_pq": 8}
#: FAISS ``IndexIVF.parallel_mode``: 1 = the threads share one query's probed lists.
SEARCH_PARALLEL_MODE = 1


class BuildFacts(BaseModel):
    """How an index was built; written into its manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: IndexKind
    metric: Literal["inner_product"] = "inner_product"
    dim: int
    count: int  # vectors at build time
    nlist: int  # 0 for flat
    nprobe: int  # 0 for flat
    recall_at_10: float  # measured against exact search (1.0 for flat, by construction)
    recall_queries: int  # sample size of that measurement (0 for flat)
    target_recall: float
    trained_on: int  # k-means training points (0 for flat)
    seed: int
    build_seconds: float
    compress: Compression  # of the IVF (for flat: the one it will get once it outgrows it)
    rerank_factor: int  # candidates fetched per result before exact re-ranking (1: none)
    pq_m: int | None = None
    quantizer: Literal["flat", "hnsw"] = "flat"  # the IVF's coarse quantizer
    faiss_version: str = faiss.__version__

    @property
    def needs_rerank(self) -> bool:
        return self.kind in ("ivf_sq8", "ivf_pq")


@dataclass
class BuiltIndex:
    index: Any  # a faiss.Index (untyped)
    facts: BuildFacts


def _check_vectors(vectors: Any, dim: int | None, what: str) -> Vectors:
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim) or arr.shape[1] == 0:
        want = f"(n, {dim})" if dim is not None else "(n, d)"
        raise VectorIndexError(f"{what} must have shape {want}, got {tuple(arr.shape)}")
    sq = np.einsum("ij,ij->i", arr, arr)
    if not np.isfinite(sq).all():
        raise VectorIndexError(f"{what} contain NaN or infinite values")
    off = np.abs(np.sqrt(sq) - 1.0)
    if off.size and float(off.max()) > NORM_TOLERANCE:
        row = int(off.argmax())
        raise VectorIndexError(
            f"{what} must be L2-normalised: row {row} has norm {math.sqrt(float(sq[row])):.4f}"
        )
    return arr


def _check_ids(ids: Any, n: int) -> Ids:
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n or (n and not np.issubdtype(arr.dtype, np.integer)):
        raise VectorIndexError(f"ids must be {n} integers, got shape {arr.shape} {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if n and int(arr.min()) < 0:
        raise VectorIndexError("ids must be >= 0 (catalog row ids)")
    if np.unique(arr).size != n:
        raise VectorIndexError("ids must be unique")
    return arr


def _new_ivf(
    kind: IndexKind, dim: int, nlist: int, m: int, *, hnsw: bool
) -> tuple[faiss.IndexIVF, faiss.Index | None]:
    """An untrained IVF, and the flat index its k-means must train with (keep it alive
    until training is done: FAISS does not own it), if any."""
    ip = faiss.METRIC_INNER_PRODUCT
    # the IVF keeps a reference to its quantizer
    quantizer = faiss.IndexHNSWFlat(dim, params.HNSW_M, ip) if hnsw else faiss.IndexFlatIP(dim)
    index: faiss.IndexIVF
    if kind == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
    elif kind == "ivf_sq8":
        qtype = faiss.ScalarQuantizer.QT_8bit
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, qtype, ip)
    elif kind == "ivf_pq":
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, ip)
    else:
        raise ValueError(f"not an IVF kind: {kind}")
    index.cp.spherical = True  # k-means for cosine: centroids renormalised every iteration
    clustering = None
    if hnsw:  # exact k-means, then the centroids go into the graph
        clustering = faiss.IndexFlatIP(dim)
        index.clustering_index = clustering
    return index, clustering


def ready(index: faiss.Index) -> faiss.Index:
    """Set what FAISS does not store in the file: a single query's probed lists are
    scanned on all threads (``parallel_mode`` 1), not one thread per query. Not for PQ:
    there each list's scan recomputes its distance tables (measured 28 ms instead of 0.3
    per query at 1024-d)."""
    if isinstance(index, (faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer)):
        index.parallel_mode = SEARCH_PARALLEL_MODE
    return index


def build_index(
    ids: Any,
    vectors: Any,
    *,
    kind: IndexKind | Literal["auto"] = "auto",
    target_recall: float = 0.95,
    seed: int = 0,
    sample_queries: int = 1000,
    exact_below: int = params.EXACT_BELOW,
    compress: Compression = params.DEFAULT_COMPRESSION,
    rerank_factor: int | None = None,
    points_per_list: int = params.DEFAULT_POINTS_PER_LIST,
    hnsw_quantizer_from: int = params.HNSW_QUANTIZER_FROM,
) -> BuiltIndex:
    """Build an index of ``vectors`` (float32, L2-normalised rows) under catalog ``ids``.

    ``kind="auto"`` follows :func:`~indexer.store.index_params.choose_kind`. IVF kinds are
    trained on a seeded sample (:func:`~indexer.store.index_params.training_size`), filled,
    and their ``nprobe`` is tuned to ``target_recall`` (stored on the index itself, so a
    loaded index searches with it by default).
    """
    start = time.perf_counter()
    x = _check_vectors(vectors, None, "vectors")
    n, dim = x.shape
    id_arr = _check_ids(ids, n)
    bad_factor = rerank_factor is not None and rerank_factor < 1
    if not 0.0 < target_recall <= 1.0 or bad_factor or sample_queries < 1:
        raise ValueError("need 0 < target_recall <= 1, rerank_factor >= 1, sample_queries >= 1")
    chosen: IndexKind = (
        params.choose_kind(n, exact_below=exact_below, compress=compress)
        if kind == "auto"
        else kind
    )
    facts: dict[str, Any] = {
        "kind": chosen,
        "dim": dim,
        "count": n,
        "target_recall": target_recall,
        "seed": seed,
        "compress": {"ivf_flat": "none", "ivf_sq8": "sq8", "ivf_pq": "pq"}.get(chosen, compress),
    }
    index: faiss.Index
    if chosen == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if n:
            index.add_with_ids(x, id_arr)
        facts |= {"nlist": 0, "nprobe": 0, "recall_at_10": 1.0, "recall_queries": 0}
        facts |= {"trained_on": 0, "rerank_factor": 1}
    else:
        if n < params.MIN_POINTS_PER_LIST:
            raise VectorIndexError(f"an IVF index needs at least 39 vectors, got {n}")
        nlist = params.choose_nlist(n)
        m = params.pq_m(dim) if chosen == "ivf_pq" else None
        hnsw = params.uses_hnsw_quantizer(nlist, hnsw_from=hnsw_quantizer_from)
        ivf, clustering = _new_ivf(chosen, dim, nlist, m or 0, hnsw=hnsw)
        rng = np.random.default_rng(seed)
        n_train = params.training_size(n, nlist, points_per_list=points_per_list)
        train_rows = np.sort(rng.choice(n, size=n_train, replace=False))
        ivf.cp.seed = seed
        ivf.train(x[train_rows] if n_train < n else x)
        del clustering
        ready(ivf)
        for lo in range(0, n, ADD_CHUNK):
            ivf.add_with_ids(x[lo : lo + ADD_CHUNK], id_arr[lo : lo + ADD_CHUNK])
        factor = 1 if chosen == "ivf_flat" else rerank_factor or RERANK_FACTOR[chosen]
        nprobe, recall, used = _tune_nprobe(
            ivf, id_arr, x, target_recall, rng, sample_queries, factor
        )
        ivf.nprobe = nprobe
        index = ivf
        facts |= {"nlist": nlist, "nprobe": nprobe, "recall_at_10": recall}
        facts |= {"recall_queries": used, "trained_on": n_train, "rerank_factor": factor}
        facts |= {"pq_m": m, "quantizer": "hnsw" if hnsw else "flat"}
    facts["build_seconds"] = round(time.perf_counter() - start, 3)
    built = BuiltIndex(index=index, facts=BuildFacts.model_validate(facts))
    logger.info("built index: %s", built.facts.model_dump())
    return built


def _drop_self(found: Ids, self_ids: Ids, k: int) -> Ids:
    """Each row's ids without the query's own id (or without its last id if absent)."""
    is_self = found == self_ids[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(found, order, axis=1)


def _tune_nprobe(
    index: faiss.IndexIVF,
    ids: Ids,
    x: Vectors,
    target: float,
    rng: np.random.Generator,
    sample_queries: int,
    rerank_factor: int,
) -> tuple[int, float, int]:
    """The smallest candidate nprobe reaching ``target`` mean recall@10 (leave-one-out)."""
    n = x.shape[0]
    k = min(RECALL_K, n - 1)
    rows = np.sort(rng.choice(n, size=min(sample_queries, n), replace=False))
    queries, self_ids = x[rows], ids[rows]
    _, truth_rows = faiss.knn(queries, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    truth = _drop_self(ids[truth_rows], self_ids, k)
    order = np.argsort(ids)

    def vectors_by_id(wanted: Ids) -> Vectors:
        return x[order[np.searchsorted(ids, wanted, sorter=order)]]

    recall = 0.0
    for nprobe in params.nprobe_candidates(index.nlist):
        fetch = (k + 1) * rerank_factor
        _, found = index.search(queries, fetch, params=_ivf_params(index, nprobe, None))
        if rerank_factor > 1:
            found = _rerank_many(queries, found, vectors_by_id, k + 1)
        found = _drop_self(found[:, : k + 1], self_ids, k)
        hits = sum(np.intersect1d(f, t).size for f, t in zip(found, truth, strict=True))
        recall = hits / (k * len(rows))
        logger.debug("nprobe %d: recall@%d %.4f", nprobe, k, recall)
        if recall >= target:
            return nprobe, recall, len(rows)
    logger.warning("recall@10 %.3f below target %.3f even with nprobe = nlist", recall, target)
    return int(index.nlist), recall, len(rows)


def _order(scores: Scores, ids: Ids) -> npt.NDArray[np.intp]:
    """Positions by score descending, then id ascending."""
    return np.lexsort((ids, -scores))


def rerank(
    query: Any, candidate_ids: Any, vectors_by_id_fn: VectorsById, k: int
) -> tuple[Scores, Ids]:
    """Exact scores of ``candidate_ids`` for one query; the best ``k`` (score desc, id asc).

    ``vectors_by_id_fn(ids)`` returns the float32 vectors of ``ids``, in that order (the
    catalog's stored embeddings). Ids of ``-1`` (no result) are ignored.
    """
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    cand = np.asarray(candidate_ids, dtype=np.int64).reshape(-1)
    cand = np.unique(cand[cand >= 0])
    if cand.size == 0 or k < 1:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    vecs = np.asarray(vectors_by_id_fn(cand), dtype=np.float32)
    if vecs.shape != (cand.size, q.size):
        raise VectorIndexError(f"expected {cand.size} vectors of dim {q.size}, got {vecs.shape}")
    # row by row, not one matrix product: BLAS rounds a row's dot product differently
    # with the number of rows, and an item's score must not depend on how many candidates
    # came with it (page cursors compare scores exactly)
    scores = np.einsum("ij,j->i", vecs, q).astype(np.float32)
    best = _order(scores, cand)[:k]
    return scores[best], cand[best]


def _rerank_many(queries: Vectors, found: Ids, vectors_by_id: VectorsById, k: int) -> Ids:
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for i, (q, cand) in enumerate(zip(queries, found, strict=True)):
        _, best = rerank(q, cand, vectors_by_id, k)
        out[i, : best.size] = best
    return out


def _ivf_params(
    index: faiss.IndexIVF, nprobe: int, sel: faiss.IDSelector | None
) -> faiss.SearchParametersIVF:
    out = faiss.SearchParametersIVF()
    out.nprobe = nprobe
    out.sel = sel
    quantizer = faiss.downcast_index(index.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):  # look at enough of the graph for nprobe lists
        hnsw = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in the stubs
        hnsw.efSearch = max(quantizer.hnsw.efSearch, params.HNSW_EF_PER_PROBE * nprobe)
        out.quantizer_params = hnsw
        out.referenced_objects = [hnsw]  # type: ignore[attr-defined]  # keeps it alive
    return out


def search(
    index: faiss.Index,
    queries: Any,
    k: int,
    *,
    nprobe: int | None = None,
    allowed_ids: Any | None = None,
) -> tuple[list[Scores], list[Ids]]:
    """The ``k`` nearest ids of each query row, best first (score desc, then id asc).

    Returns one array of scores and one of ids per query; missing results (fewer than
    ``k`` vectors, or fewer allowed ones) are dropped rather than padded with ``-1``.
    ``allowed_ids`` restricts the search to those catalog ids inside FAISS (an
    ``IDSelectorBatch`` on external ids; ``IndexIDMap2`` translates it). An IVF then scans
    ``nprobe * ntotal / len(allowed_ids)`` lists (at most all of them), so a selective
    filter still sees as many candidates as an unfiltered search; when the probed lists
    still hold fewer than ``k`` allowed vectors (a filter that follows the clusters), twice
    as many lists are probed, until ``k`` results or every list. ``nprobe=None`` uses the
    value tuned at build time.
    """
    q = _check_vectors(queries, int(index.d), "queries")
    if k < 1:
        raise VectorIndexError(f"k must be >= 1, got {k}")
    empty = ([np.zeros(0, np.float32) for _ in q], [np.zeros(0, np.int64) for _ in q])
    ntotal = int(index.ntotal)
    selector, n_allowed = None, ntotal
    if allowed_ids is not None:
        allowed = np.ascontiguousarray(np.unique(np.asarray(allowed_ids, dtype=np.int64)))
        if allowed.size == 0:
            return empty
        selector, n_allowed = faiss.IDSelectorBatch(allowed), int(allowed.size)
    if ntotal == 0 or len(q) == 0:
        return empty
    k = min(k, ntotal)
    search_params: faiss.SearchParameters | None = None
    if isinstance(index, faiss.IndexIVF):
        probe = int(nprobe if nprobe is not None else index.nprobe)
        if nprobe is None and selector is not None:
            probe = math.ceil(probe * ntotal / max(1, n_allowed))
        probe = max(1, min(probe, int(index.nlist)))
        search_params = _ivf_params(index, probe, selector)
        scores, labels = index.search(q, k, params=search_params)
        # A filter that follows the clusters (say, every MR image in a few lists) can leave
        # the probed lists without an allowed vector: probe twice as many lists until k
        # results come back or every list has been probed
        wanted = min(k, n_allowed)
        while selector is not None and probe < index.nlist and (labels >= 0).sum(1).min() < wanted:
            probe = min(2 * probe, int(index.nlist))
            scores, labels = index.search(q, k, params=_ivf_params(index, probe, selector))
    else:
        if selector is not None:
            search_params = faiss.SearchParameters()
            search_params.sel = selector
        scores, labels = index.search(q, k, params=search_params)
    out_scores: list[Scores] = []
    out_ids: list[Ids] = []
    for row_scores, row_ids in zip(scores, labels, strict=True):
        keep = row_ids >= 0
        s, i = row_scores[keep].astype(np.float32), row_ids[keep].astype(np.int64)
        order = _order(s, i)
        out_scores.append(s[order])
        out_ids.append(i[order])
    del selector  # kept alive until the search is done (FAISS does not own it)
    return out_scores, out_ids


def remove(index: faiss.Index, ids: Any) -> int:
    """Remove ``ids`` from the index; returns how many were present."""
    arr = np.ascontiguousarray(np.unique(np.asarray(ids, dtype=np.int64)))
    if arr.size == 0 or int(index.ntotal) == 0:
        return 0
    return int(index.remove_ids(faiss.IDSelectorBatch(arr)))


def add(index: faiss.Index, ids: Any, vectors: Any) -> None:
    """Add ``vectors`` under ``ids``; an id already in the index is replaced."""
    x = _check_vectors(vectors, int(index.d), "vectors")
    id_arr = _check_ids(ids, x.shape[0])
    if x.shape[0] == 0:
        return
    if not index.is_trained:
        raise VectorIndexError("the index is not trained: build it with build_index")
    remove(index, id_arr)
    for lo in range(0, x.shape[0], ADD_CHUNK):
        index.add_with_ids(x[lo : lo + ADD_CHUNK], id_arr[lo : lo + ADD_CHUNK])
