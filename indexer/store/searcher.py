"""Nearest neighbours of a query vector: the published index, filters, catalog rows.

Used by ``medsearch index search`` and by the query service. Filters are resolved to
catalog ids and applied inside the FAISS search with an id selector. Results are ordered
by score, then id. :meth:`Searcher.reload_if_changed` switches to a newly published
version; a search in flight keeps the index object it started with.

A compressed index's candidates are re-ranked with float32 vectors held in memory
(``rerank="memory"``, the service's default: :mod:`indexer.store.rerank_store`) or read
from the catalog per query (``rerank="catalog"``: one-off CLI searches, small memory).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.errors import ModelMismatchError
from indexer.store.catalog import Catalog, ModelBinding
from indexer.store.filters import Filters
from indexer.store.index_files import LoadedIndex
from indexer.store.records import ItemRecord
from indexer.store.rerank_store import RerankSource, RerankStore
from indexer.store.sync import index_store
from indexer.store.vector_index import rerank, search

logger = logging.getLogger(__name__)
MAX_TIE_ROUNDS = 8  # doublings of the candidates to complete a group of equal scores


@dataclass
class Hit:
    id: int
    score: float
    item: ItemRecord


class Searcher:
    def __init__(
        self,
        index_dir: Path,
        catalog: Catalog,
        *,
        rerank: RerankSource = "catalog",
        rerank_max_bytes: int | None = None,
    ) -> None:
        self.index_dir = index_dir
        self.catalog = catalog
        self.rerank = rerank
        self.rerank_max_bytes = rerank_max_bytes
        self._store = index_store(index_dir)
        self._lock = threading.Lock()
        self._loaded: LoadedIndex = self._store.load()
        catalog.check_index(self._loaded.manifest.catalog_id, index_dir)
        self.binding: ModelBinding = catalog.required_binding()
        self.rerank_store: RerankStore | None = None
        self._start_rerank_store()

    def _start_rerank_store(self) -> None:
        """Fill (or top up) the in-memory re-rank vectors when this index needs them."""
        if self.rerank != "memory" or not self._loaded.manifest.facts.needs_rerank:
            return
        if self.rerank_store is None:
            dim = self.binding.embedding_dim
            self.rerank_store = RerankStore(self.catalog, dim, self.rerank_max_bytes)
        self.rerank_store.start()

    @property
    def loaded(self) -> LoadedIndex:
        return self._loaded

    def check_model(self, fingerprint: str) -> None:
        if fingerprint != self.binding.model_fingerprint:
            raise ModelMismatchError(
                f"the index was built with model {self.binding.model_fingerprint[:16]}, "
                f"not {fingerprint[:16]}"
            )

    def reload_if_changed(self) -> bool:
        current = self._store.current()
        if current is None or current.version == self._loaded.manifest.version:
            return False
        with self._lock:
            loaded = self._store.load()
            self.catalog.check_index(loaded.manifest.catalog_id, self.index_dir)
            self._loaded = loaded  # one reference swap: searches in flight keep the old one
            self._start_rerank_store()  # rows added since: read in the background
        logger.info("switched to index version %s", loaded.manifest.version)
        return True

    def rerank_vectors(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The float32 vectors of ``ids`` for exact re-ranking (held in memory or read)."""
        store = self.rerank_store
        return store.vectors(ids) if store is not None else self.catalog.embedding_matrix(list(ids))

    def search(
        self,
        vector: npt.NDArray[np.float32],
        k: int,
        *,
        filters: Filters | None = None,
        nprobe: int | None = None,
        exclude_ids: set[int] | None = None,
        min_score: float | None = None,
    ) -> list[Hit]:
        """The ``k`` best hits (score, then id), none below ``min_score``.

        Equal scores (identical images) at the cut are resolved by id, whatever the
        number asked for: when the candidates end inside a group of equal scores, more
        are fetched until the group is whole. So the first ``k`` of a larger ``k`` are
        always the same: pages never overlap or skip."""
        loaded = self._loaded
        allowed = None
        if filters is not None and not filters.is_empty():
            allowed = self.catalog.filter_ids(filters)
            if allowed.size == 0:
                return []
        extra = len(exclude_ids) if exclude_ids else 0
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        facts = loaded.manifest.facts
        fetch = (k + extra) * (facts.rerank_factor if facts.needs_rerank else 1)
        for _ in range(MAX_TIE_ROUNDS):
            scores, ids = search(loaded.index, query, fetch, nprobe=nprobe, allowed_ids=allowed)
            found_scores, found_ids = scores[0], ids[0]
            if facts.needs_rerank:  # compressed codes: exact scores from the float32 vectors
                found_scores, found_ids = rerank(query[0], found_ids, self.rerank_vectors, fetch)
            valid = [(float(s), int(i)) for s, i in zip(found_scores, found_ids, strict=True)]
            valid = [(s, i) for s, i in valid if i >= 0]
            pairs = sorted(
                (
                    (s, i)
                    for s, i in valid
                    if not (exclude_ids and i in exclude_ids)
                    and (min_score is None or s >= min_score)
                ),
                key=lambda p: (-p[0], p[1]),
            )
            exhausted = len(valid) < fetch or fetch >= int(loaded.index.ntotal)
            if exhausted or len(pairs) < k or min(s for s, _ in valid) < pairs[k - 1][0]:
                break
            fetch *= 2  # the candidates end among equal scores at the cut: complete them
        pairs = pairs[:k]
        rows = self.catalog.items(i for _, i in pairs)
        return [Hit(i, s, rows[i]) for s, i in pairs if i in rows and rows[i].status == "active"]
