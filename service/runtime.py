"""What the service holds while it runs (created in the lifespan, kept on ``app.state``)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from indexer.encoders.encoder import Encoder
from indexer.errors import ImageRefused
from indexer.imaging.burned_in import Region
from indexer.imaging.guard import DecodeJob, DecoderPool
from indexer.imaging.handover import slot_bytes
from indexer.imaging.types import DecodedImage, Reason
from indexer.sources.dicomweb_client import DicomWebClient
from indexer.store.catalog import Catalog, catalog_url
from indexer.store.searcher import Searcher
from indexer.store.series_search import SeriesSearcher
from service.batcher import MicroBatcher, Overloaded
from service.budget import DECODES_PER_WORKER, DecodeBudget
from service.caches import LRU
from service.config import EngineSettings, ServiceSettings
from service.errors import ServiceError
from service.metrics import Metrics
from service.qc_reference import ReferenceCache
from service.results import Links
from service.thumbnails import Thumbnail, ThumbnailKey

logger = logging.getLogger(__name__)
T = TypeVar("T")
Vector = npt.NDArray[np.float32]


class Runtime:
    def __init__(self, settings: ServiceSettings, engine: EngineSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        # loads, verifies hashes and runs the self-test (as the encoder settings say)
        self.encoder = Encoder.load(settings.model_dir, engine.encoder)
        # resolved once: a symlink swapped to another index (blue/green) takes effect at
        # the next start, never half-way (new versions of *this* index are picked up live)
        index_dir = settings.index_dir.resolve()
        self.catalog = Catalog.open(catalog_url(index_dir, engine.catalog), upgrade=False)
        self.searcher = Searcher(index_dir, self.catalog, rerank=settings.rerank_store)
        self.searcher.check_model(self.encoder.fingerprint)
        self.series = SeriesSearcher(self.searcher)
        self.qc_reference = ReferenceCache()  # POST /v1/qc: outlier scores per version
        self.imaging = engine.imaging
        self.decoders = DecoderPool(self.imaging, settings.workers)
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="medsearch-work")
        # one thread per encoder, so that cheap text queries never wait behind image batches
        self.image_pool = ThreadPoolExecutor(1, thread_name_prefix="medsearch-image")
        self.text_pool = ThreadPoolExecutor(1, thread_name_prefix="medsearch-text")
        self.text_cache: LRU[str, Vector] = LRU(settings.text_cache_size)
        self.thumbnails: LRU[ThumbnailKey, Thumbnail] = LRU(settings.thumbnail_cache_size)
        self.recipe = self.encoder.recipe(self.searcher.binding.recipe)
        self.decode_budget = DecodeBudget(
            settings.decode_budget_mb << 20, jobs=DECODES_PER_WORKER * settings.workers
        )
        # one thread per decoder process: decodes never hold up searches in ``pool``
        self.decode_pool = ThreadPoolExecutor(
            settings.workers, thread_name_prefix="medsearch-decode"
        )
        self.image_batcher: MicroBatcher[npt.NDArray[np.uint8], Vector] = MicroBatcher(
            lambda inputs: list(self.encoder.embed_inputs(list(inputs), self.recipe.name)),
            self.image_pool,
            window_ms=settings.batch_window_ms,
            max_batch=settings.max_batch,
            queue_size=settings.queue_size,
            on_batch=self.metrics.batch_observer("image"),
        )
        self.text_batcher: MicroBatcher[str, Vector] = MicroBatcher(
            lambda texts: list(self.encoder.embed_texts(list(texts))),
            self.text_pool,
            window_ms=settings.batch_window_ms,
            max_batch=settings.max_batch,
            queue_size=settings.queue_size,
            on_batch=self.metrics.batch_observer("text"),
        )
        self.links = Links(
            settings.viewer_url_template, settings.wado_base_url or settings.pacs_url
        )
        self.pacs = (
            DicomWebClient(settings.pacs_url, engine.dicomweb) if settings.pacs_url else None
        )
        self._poller: asyncio.Task[None] | None = None
        self.update_index_metrics()

    # -- lifecycle
    def start(self) -> None:
        self.image_batcher.start()
        self.text_batcher.start()
        self._poller = asyncio.get_running_loop().create_task(self._poll_index())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        await self.image_batcher.stop()
        await self.text_batcher.stop()
        self.pool.shutdown(wait=False)
        self.decode_pool.shutdown(wait=False)
        self.image_pool.shutdown(wait=False)
        self.text_pool.shutdown(wait=False)
        self.decoders.close()
        if self.pacs is not None:
            self.pacs.close()
        self.catalog.close()

    async def _poll_index(self) -> None:
        while True:
            await asyncio.sleep(self.settings.index_poll_s)
            try:
                if await self.run(self.searcher.reload_if_changed):
                    self.update_index_metrics()
            except Exception as exc:  # noqa: BLE001 - keep serving the loaded version
                logger.warning("new index version not loaded: %s", type(exc).__name__)

    def update_index_metrics(self) -> None:
        manifest = self.searcher.loaded.manifest
        self.metrics.set_index(manifest.version, int(self.searcher.loaded.index.ntotal))

    # -- work off the event loop
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def queue_depth(self) -> int:
        return self.image_batcher.depth + self.text_batcher.depth

    async def _submit(self, batcher: MicroBatcher[Any, Vector], item: Any) -> Vector:
        try:
            return await batcher.submit(item)
        except Overloaded:
            raise ServiceError(
                503, "overloaded", "the request queue is full; retry shortly", {"Retry-After": "1"}
            ) from None

    async def embed_text(self, text: str) -> Vector:
        if len(text) > self.settings.max_text_chars:
            raise ServiceError(413, "text too long", f"at most {self.settings.max_text_chars}")
        cached = self.text_cache.get(text)
        if cached is not None:
            self.metrics.text_cache.labels("hit").inc()
            return cached
        self.metrics.text_cache.labels("miss").inc()
        vector = await self._submit(self.text_batcher, text)
        self.text_cache.put(text, vector)
        return vector

    async def embed_texts(self, texts: Sequence[str]) -> list[Vector]:
        return list(await asyncio.gather(*(self.embed_text(t) for t in texts)))

    async def decode(
        self, data: bytes, *, thumbnail: int | None = None, mask: tuple[Region, ...] = ()
    ) -> DecodedImage:
        """Decode an upload or a source file in a guarded worker, which hands back only the
        model's input (or a thumbnail, ``mask`` blacked out first): full-resolution pixels
        never reach this process. The bytes waiting for a worker count against the decode
        budget (503 when full)."""
        recipe = self.recipe if thumbnail is None else None
        job = DecodeJob(data=data, recipe=recipe, thumbnail=thumbnail, mask=mask)
        loop = asyncio.get_running_loop()
        async with self.decode_budget.reserve(len(data) + slot_bytes(self.recipe)):
            result = await loop.run_in_executor(self.decode_pool, self.decoders.decode, job)
        if not result.ok:
            reason = result.reason or Reason.UNSUPPORTED
            raise ImageRefused(reason.value, result.detail)
        return result.images[0]

    async def embed_image(self, data: bytes) -> tuple[Vector, DecodedImage]:
        image = await self.decode(data)
        return await self._submit(self.image_batcher, image.pixels), image


def b64decode(value: str, max_bytes: int) -> bytes:
    """Standard base64, strictly, refusing oversize input early.

    Accepted around it: surrounding whitespace and a ``data:`` URL prefix; inside it: line
    breaks (LF or CRLF), as ``base64.encodebytes`` writes them every 76 characters, which is
    what Microsoft's MedImageInsight sample code and documented requests send. Anything else
    (another character, a space inside, wrong padding) is invalid.
    """
    value = value.strip()
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1].lstrip()
    value = value.replace("\r\n", "").replace("\n", "")
    if len(value) * 3 // 4 > max_bytes:
        raise ServiceError(413, "image too large", f"at most {max_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(422, "invalid base64", "the image is not valid base64") from None
