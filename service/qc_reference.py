"""The reference outlier scores ``POST /v1/qc`` places an upload among, per index version.

Computed lazily, on the first QC request after a version is published (and per ``k``),
off the event loop, once: concurrent requests wait for the one computation. Its cost is
bounded by the sample size whatever the index size (see :mod:`indexer.store.outliers`).
The runtime holds one cache; the newest :data:`KEEP` results are kept.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import TYPE_CHECKING

from indexer.store.outliers import Reference, reference_scores

if TYPE_CHECKING:
    from service.runtime import Runtime

KEEP = 4  # (version, k) results kept


class ReferenceCache:
    def __init__(self) -> None:
        self._done: OrderedDict[tuple[str, int], Reference] = OrderedDict()
        self._lock = asyncio.Lock()

    async def get(self, rt: Runtime, k: int) -> Reference:
        loaded = rt.searcher.loaded
        key = (loaded.manifest.version, k)
        found = self._done.get(key)
        if found is not None:
            return found
        async with self._lock:
            found = self._done.get(key)
            if found is None:
                vectors = rt.searcher.rerank_vectors  # held in memory when the service has them
                found = await rt.run(
                    lambda: reference_scores(loaded, rt.catalog, k, vectors_by_id=vectors)
                )
                self._done[key] = found
                while len(self._done) > KEEP:
                    self._done.popitem(last=False)
            return found
