"""What one index and its model serve together (a *generation*), switched as a whole.

The service resolves ``MEDSEARCH_INDEX_DIR`` and ``MEDSEARCH_MODEL_DIR`` (symlinks
followed) at start and again at every index poll. New versions of the same index are
picked up by its :class:`~indexer.store.searcher.Searcher`. When a path resolves
somewhere else (blue/green: a stable symlink swapped atomically to a re-embedded index,
and the model's to the new model), the runtime loads a new :class:`Served` beside the one
serving: the index's catalog and searcher and, if the model path changed too, the model
(hashes, self-test), which must be the model the index was built with. Only then does it
switch, in one reference swap. Each request works with the generation it started with
(its query is embedded by that generation's model and searched in that generation's
index, whatever happens meanwhile), and an old generation is closed once its last request
has finished and :data:`RETIRE_AFTER_S` have passed (a streamed CSV export may outlive
its request's bookkeeping).

A switch that cannot be made (the index's model not in place yet, an index not published
yet or damaged, a catalog on a server that is not the new index's) is logged, and tried
again when either path changes or 30 s later (logged again only if the reason changed);
the old generation keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.encoders.encoder import Encoder
from indexer.encoders.preprocess import Recipe
from indexer.settings import CatalogSettings, EncoderSettings
from indexer.store.catalog import Catalog, catalog_url
from indexer.store.searcher import Searcher
from indexer.store.series_search import SeriesSearcher
from service.batcher import MicroBatcher
from service.caches import LRU
from service.config import ServiceSettings
from service.qc_reference import ReferenceCache
from service.thumbnails import Thumbnail, ThumbnailKey

logger = logging.getLogger(__name__)
Vector = npt.NDArray[np.float32]
RETIRE_AFTER_S = 60.0
RERANK_FILL_WAIT_S = 5.0  # on close: how long to let a re-rank fill in progress finish
BatchObserver = Callable[[str], Callable[[int, float], None]]


@dataclass
class Served:
    """One index, its catalog and its model, with the caches and batchers bound to them."""

    index_dir: Path  # resolved
    model_dir: Path  # resolved
    encoder: Encoder
    catalog: Catalog
    searcher: Searcher
    series: SeriesSearcher
    recipe: Recipe
    image_batcher: MicroBatcher[npt.NDArray[np.uint8], Vector]
    text_batcher: MicroBatcher[str, Vector]
    text_cache: LRU[str, Vector]
    thumbnails: LRU[ThumbnailKey, Thumbnail]
    qc_reference: ReferenceCache = field(default_factory=ReferenceCache)
    requests: int = 0  # in flight (counted on the event loop)
    retired_at: float | None = None

    @property
    def paths(self) -> tuple[Path, Path]:
        return self.index_dir, self.model_dir

    def start(self) -> None:
        self.image_batcher.start()
        self.text_batcher.start()

    def closable(self) -> bool:
        retired = self.retired_at
        return retired is not None and not self.requests and _age(retired) >= RETIRE_AFTER_S

    async def stop(self) -> None:
        await self.image_batcher.stop()
        await self.text_batcher.stop()
        store = self.searcher.rerank_store
        if store is not None:  # its fill thread reads the catalog closed below
            await asyncio.get_running_loop().run_in_executor(None, store.wait, RERANK_FILL_WAIT_S)
        self.catalog.close()


def _age(since: float) -> float:
    return time.monotonic() - since


@dataclass(frozen=True)
class Loader:
    """Loads a :class:`Served` for resolved paths (off the event loop: it reads files and
    may load a model for seconds)."""

    settings: ServiceSettings
    encoder_settings: EncoderSettings
    catalog_settings: CatalogSettings
    image_pool: Executor
    text_pool: Executor
    observe: BatchObserver

    def load(self, index_dir: Path, model_dir: Path, reuse: Served | None = None) -> Served:
        """The generation of ``index_dir`` and ``model_dir``; the model of ``reuse`` when it
        comes from the same path (not loaded twice)."""
        same_model = reuse is not None and reuse.model_dir == model_dir
        encoder = reuse.encoder if same_model and reuse else None
        encoder = encoder or Encoder.load(model_dir, self.encoder_settings)
        catalog = Catalog.open(catalog_url(index_dir, self.catalog_settings), upgrade=False)
        try:
            searcher = Searcher(
                index_dir, catalog, rerank=self.settings.rerank_store,
                rerank_max_bytes=int(self.settings.rerank_store_max_gb * 1e9),
            )  # fmt: skip
            searcher.check_model(encoder.fingerprint)
            recipe = encoder.recipe(searcher.binding.recipe)
        except BaseException:
            catalog.close()
            raise
        return Served(
            index_dir=index_dir,
            model_dir=model_dir,
            encoder=encoder,
            catalog=catalog,
            searcher=searcher,
            series=SeriesSearcher(searcher),
            recipe=recipe,
            image_batcher=self._batcher(
                lambda inputs: list(encoder.embed_inputs(list(inputs), recipe.name)),
                self.image_pool,
                "image",
            ),
            text_batcher=self._batcher(
                lambda texts: list(encoder.embed_texts(list(texts))), self.text_pool, "text"
            ),
            text_cache=LRU(self.settings.text_cache_size),
            thumbnails=LRU(self.settings.thumbnail_cache_size),
        )

    def _batcher(
        self, fn: Callable[[Any], list[Vector]], pool: Executor, kind: str
    ) -> MicroBatcher[Any, Vector]:
        s = self.settings
        return MicroBatcher(
            fn,
            pool,
            window_ms=s.batch_window_ms,
            max_batch=s.max_batch,
            queue_size=s.queue_size,
            on_batch=self.observe(kind),
        )
