"""The float32 vectors that exact re-ranking reads, held in memory.

A compressed index (``ivf_sq8``, the default, or ``ivf_pq``) scores candidates from its
codes; the searcher fetches ``k * rerank_factor`` of them and rescores them exactly with
the float32 embeddings (:func:`~indexer.store.vector_index.rerank`). Read from the catalog,
that is a database round trip per query (a network hop on PostgreSQL) and the largest
part of a search at 10^6 items; :class:`RerankStore` keeps them in one array ordered by
catalog id instead (a lookup is a binary search, a few microseconds).

- It is filled from the catalog in a background thread (:meth:`RerankStore.start`), in id
  order. Until then, and for any id it does not hold, vectors are read from the catalog:
  results never depend on whether the store is ready, only their speed does.
- An item's embedding is written once, with its row, and never changed (a new model is a
  new index: ``medsearch index reembed``), so a vector held is never stale. Rows added
  after the fill are read by the next :meth:`~RerankStore.start` (the searcher calls it
  when it loads a new index version). A row committed late with a lower id than one
  already read (concurrent writers on PostgreSQL) is served from the catalog.
- Memory: ``4 * dim + 8`` bytes per active item (4 KB at 1024-d) on top of the index's
  codes (~1.1 KB per vector for SQ8), with up to 25% spare room for rows added later, and
  never more than ``max_bytes`` (``MEDSEARCH_RERANK_STORE_MAX_GB``, 8 by default: 2M
  vectors at 1024-d; 10^7 would need 40 GB): past it the store keeps the rows it holds
  (the lowest ids), says so once in the log, and the rest are read from the catalog.
  ``MEDSEARCH_RERANK_STORE=catalog`` keeps it off (re-rank from the catalog, as before).
"""

from __future__ import annotations

import logging
import threading
from typing import Literal

import numpy as np
import numpy.typing as npt

from indexer.errors import CatalogError
from indexer.store.catalog import Catalog

logger = logging.getLogger(__name__)

RerankSource = Literal["memory", "catalog"]
Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]
_GROWTH = 1.25  # capacity grows by this factor (spare room for rows added later)


class RerankStore:
    """Catalog embeddings by id, in memory; missing ids fall back to the catalog."""

    def __init__(self, catalog: Catalog, dim: int, max_bytes: int | None = None) -> None:
        self._catalog = catalog
        self._dim = dim
        # rows that fit in max_bytes (ids and vectors); None: no limit
        self.max_rows = None if max_bytes is None else max_bytes // (4 * dim + 8)
        self._fill_lock = threading.Lock()  # one fill at a time
        self._ids = np.zeros(0, np.int64)  # capacity-sized buffers; the first ``n`` rows hold
        self._vectors = np.zeros((0, dim), np.float32)
        # what readers use: a view of the first n rows, swapped in one assignment
        self._held: tuple[Ids, Vectors] = (self._ids, self._vectors)
        self._thread: threading.Thread | None = None
        self.fills = 0  # completed fills (tests and logs)

    @property
    def size(self) -> int:
        return int(self._held[0].size)

    def start(self) -> None:
        """Read the rows added since the last fill (all rows the first time), in the
        background; a fill already running is not started twice."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._fill_logged, name="medsearch-rerank-fill")
        self._thread.daemon = True
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a running fill; True when none is running."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def full(self) -> bool:
        """Whether the store holds all that ``max_bytes`` allows (later rows: catalog)."""
        return self.max_rows is not None and self.size >= self.max_rows

    def _fill_logged(self) -> None:
        try:
            was_full = self.full
            added = self.fill()
            logger.info("re-rank store: %d vectors held (%d new)", self.size, added)
            if self.full and not was_full:
                logger.warning(
                    "re-rank store full at %d vectors (MEDSEARCH_RERANK_STORE_MAX_GB): the "
                    "vectors of later rows are read from the catalog per query",
                    self.size,
                )
        except Exception:  # the catalog path still answers; say why memory does not
            logger.exception("re-rank store fill failed; re-ranking reads the catalog")

    def fill(self) -> int:
        """Read the active rows after the highest id held; returns how many were added."""
        with self._fill_lock:
            if self.full:  # later rows stay in the catalog
                self.fills += 1
                return 0
            n = self.size
            after = int(self._ids[n - 1]) if n else 0
            added = 0
            for ids, vectors in self._catalog.vectors(after_id=after):
                if vectors.shape[1] != self._dim:
                    raise CatalogError(f"embeddings of dim {vectors.shape[1]}, not {self._dim}")
                if self.max_rows is not None:
                    room = self.max_rows - n - added
                    ids, vectors = ids[:room], vectors[:room]
                    if not len(ids):
                        break
                self._reserve(n + added + len(ids))
                self._ids[n + added : n + added + len(ids)] = ids
                self._vectors[n + added : n + added + len(ids)] = vectors
                added += len(ids)
                end = n + added
                self._held = (self._ids[:end], self._vectors[:end])  # readers see it now
            self.fills += 1
            return added

    def _reserve(self, rows: int) -> None:
        if rows <= self._ids.size:
            return
        first = self._ids.size == 0
        planned = self._catalog.count() if first else self._ids.size
        wanted = max(rows, int(planned * _GROWTH))
        if self.max_rows is not None:
            wanted = min(wanted, self.max_rows)
        n = self.size
        ids = np.zeros(wanted, np.int64)
        vectors = np.zeros((wanted, self._dim), np.float32)
        ids[:n], vectors[:n] = self._ids[:n], self._vectors[:n]
        self._ids, self._vectors = ids, vectors  # readers keep their view of the old ones

    def vectors(self, ids: Ids) -> Vectors:
        """The float32 vectors of ``ids``, in that order."""
        want = np.asarray(ids, dtype=np.int64).reshape(-1)
        held_ids, held = self._held
        out = np.empty((want.size, self._dim), np.float32)
        hit = np.zeros(want.size, dtype=bool)
        if held_ids.size:
            pos = np.minimum(np.searchsorted(held_ids, want), held_ids.size - 1)
            hit = held_ids[pos] == want
            out[hit] = held[pos[hit]]
        if not hit.all():
            out[~hit] = self._catalog.embedding_matrix(list(want[~hit]))
        return out
