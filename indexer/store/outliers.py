"""Outlier scores: how unlike its nearest indexed neighbours an image is.

An item's **score** is the mean cosine distance ``1 - cosine`` to its ``k`` nearest *other*
active items (itself left out: it is trivially its own nearest neighbour). An image that
belongs to a dense group scores near 0; one unlike anything indexed scores high. A
**percentile** places a score among the items' own scores: the share of (reference) items
whose score is lower than or equal to it, in ``[0, 1]``; the most unusual item of an index
has percentile 1.

Two computations, for two uses:

- :func:`exact_scores` / :func:`rank_outliers` (``medsearch index outliers``): every
  active item against every other, exactly, with a FAISS flat inner-product index and the
  queries in blocks. Cost ``O(n^2 d)``: 20,000 items of 1024 dimensions take 13 s on 2
  CPU cores (64 GFLOP/s); 10^6 items, 2,500 times as much (about 9 hours on 2 cores, about
  an hour on 16), and ``2 * n * d * 4`` bytes of memory (8 GB). A curation job, not a
  request.
- :func:`reference_scores` (the service's ``POST /v1/qc``): the scores of a seeded sample
  of at most :data:`REFERENCE_SAMPLE` items, each searched in the *published* index (the
  same search, IVF or exact, that places an uploaded image), so an upload's score and the
  reference scores are measured alike. Cost: ``REFERENCE_SAMPLE`` searches and their
  embeddings read from the catalog, whatever the size of the index (1.2 s of search for
  an exact index of 20,000 items on 2 cores; an IVF at 10^6 items scans a few lists per
  query), plus the list of active ids (8 bytes per item). With 2,000 sampled items the
  percentile's standard error ``sqrt(p (1 - p) / 2000)`` is at most 0.011, and 0.002 at
  the 99th percentile, where images get flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt

from indexer.errors import CatalogError
from indexer.store.catalog import Catalog
from indexer.store.filters import Filters
from indexer.store.index_files import LoadedIndex
from indexer.store.vector_index import VectorsById, rerank, search

Ids = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float64]

REFERENCE_SAMPLE = 2000  # items whose scores place an uploaded image (QC)
QUERY_BLOCK = 2048  # exact scores: query rows per FAISS search
CHUNK = 1000  # ids per catalog read (SQL IN lists)


@dataclass(frozen=True)
class ItemScores:
    """Outlier scores of items (``ids`` in id order) with ``k`` neighbours each."""

    ids: Ids
    scores: Scores
    k: int

    def percentiles(self) -> Scores:
        """For each item, the share of items whose score is <= its own."""
        ordered = np.sort(self.scores)
        out: Scores = np.searchsorted(ordered, self.scores, side="right") / len(ordered)
        return out


@dataclass(frozen=True)
class Outlier:
    id: int
    source_uri: str
    score: float
    percentile: float


@dataclass(frozen=True)
class Reference:
    """Sorted scores of (a sample of) one published index version's items."""

    version: str
    k: int  # neighbours per score (the requested k, at most items - 1)
    index_items: int  # active items in that version
    scores: Scores  # ascending

    @property
    def sampled(self) -> bool:
        return len(self.scores) < self.index_items

    def percentile(self, score: float) -> float:
        """The share of reference items whose score is <= ``score``."""
        return float(np.searchsorted(self.scores, score, side="right") / len(self.scores))


def neighbours_for(k: int, items: int) -> int:
    """The neighbours a score can average over: ``k``, at most every other item."""
    if items < 2:
        raise CatalogError(f"outlier scores need at least 2 indexed items, this index has {items}")
    return min(k, items - 1)


def mean_distance(similarities: npt.ArrayLike) -> float:
    """The score of one image from the cosines of its nearest neighbours."""
    values = np.asarray(similarities, dtype=np.float64)
    return float(np.mean(1.0 - values))


def _drop_self(
    scores: npt.NDArray[np.float32], found: npt.NDArray[np.int64], self_id: int, k: int
) -> npt.NDArray[np.float32]:
    """The ``k`` best cosines among ``found`` other than ``self_id``; when ties with
    duplicates pushed the item itself out of the list, the first ``k`` are others."""
    keep = found != self_id
    out: npt.NDArray[np.float32] = scores[keep][:k]
    return out


def exact_scores(ids: Ids, vectors: npt.NDArray[np.float32], k: int) -> ItemScores:
    """Every item's score against every other item, exactly (see the module's costs)."""
    k = neighbours_for(k, len(ids))
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    scores = np.empty(len(ids), np.float64)
    for start in range(0, len(ids), QUERY_BLOCK):
        block = np.ascontiguousarray(vectors[start : start + QUERY_BLOCK], dtype=np.float32)
        sims, rows = index.search(block, k + 1)
        for offset in range(len(block)):
            row = start + offset
            scores[row] = mean_distance(_drop_self(sims[offset], rows[offset], row, k))
    return ItemScores(np.asarray(ids, dtype=np.int64), scores, k)


def catalog_scores(catalog: Catalog, k: int) -> ItemScores:
    """:func:`exact_scores` of the catalog's active items."""
    chunks = list(catalog.vectors())
    if not chunks:
        raise CatalogError("this index has no active items")
    ids = np.concatenate([c[0] for c in chunks])
    vectors = np.concatenate([c[1] for c in chunks])
    return exact_scores(ids, vectors, k)


def rank_outliers(catalog: Catalog, k: int, top: int | None = None) -> list[Outlier]:
    """Active items, most unusual first (score descending, then id), with percentiles."""
    scored = catalog_scores(catalog, k)
    percentiles = scored.percentiles()
    order = np.lexsort((scored.ids, -scored.scores))[:top]
    wanted = [int(scored.ids[i]) for i in order]
    uris: dict[int, str] = {}
    for start in range(0, len(wanted), CHUNK):
        records = catalog.items(wanted[start : start + CHUNK])
        uris.update((i, record.source_uri) for i, record in records.items())
    return [
        Outlier(
            id=int(scored.ids[i]),
            source_uri=uris[int(scored.ids[i])],
            score=float(scored.scores[i]),
            percentile=float(percentiles[i]),
        )
        for i in order
    ]


def reference_scores(
    loaded: LoadedIndex,
    catalog: Catalog,
    k: int,
    *,
    sample: int = REFERENCE_SAMPLE,
    seed: int = 0,
    vectors_by_id: VectorsById | None = None,
) -> Reference:
    """The scores of a seeded sample of at most ``sample`` of ``loaded``'s active items,
    each searched in ``loaded`` (itself left out), as :func:`mean_distance` of its hits.
    A compressed index's candidates are re-ranked with ``vectors_by_id`` (the service's
    in-memory re-rank vectors), else with vectors read from the catalog."""
    manifest = loaded.manifest
    active = catalog.filter_ids(Filters())
    active = active[active <= manifest.catalog_high_water]  # those in this version
    items = len(active)
    k = neighbours_for(k, items)
    if items > sample:
        active = np.sort(np.random.default_rng(seed).choice(active, sample, replace=False))
    chosen = [int(i) for i in active]
    queries = catalog.embedding_matrix(chosen)
    factor = manifest.facts.rerank_factor if manifest.facts.needs_rerank else 1
    fetch = (k + 1) * factor
    found_scores, found_ids = search(loaded.index, queries, fetch)
    lookup = vectors_by_id or (lambda wanted: catalog.embedding_matrix(list(wanted)))
    scores = np.empty(len(chosen), np.float64)
    for row, item_id in enumerate(chosen):
        sims, ids = found_scores[row], found_ids[row]
        if factor > 1:  # compressed codes: exact cosines from the float32 vectors
            sims, ids = rerank(queries[row], ids, lookup, fetch)
        scores[row] = mean_distance(_drop_self(sims, ids, item_id, k))
    return Reference(manifest.version, k, items, np.sort(scores))
