"""What the service holds while it runs (created in the lifespan, kept on ``app.state``)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from indexer.encoders.encoder import Encoder
from indexer.encoders.preprocess import Recipe
from indexer.errors import ImageRefused, MedsearchError
from indexer.imaging.burned_in import Region
from indexer.imaging.guard import DecodeJob, DecoderPool
from indexer.imaging.handover import slot_bytes
from indexer.imaging.types import DecodedImage, Reason
from indexer.sources.dicomweb_client import DicomWebClient
from indexer.store.catalog import Catalog
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
from service.served import Loader, Served
from service.thumbnails import Thumbnail, ThumbnailKey

logger = logging.getLogger(__name__)
RETRY_SWITCH_S = 30.0  # a switch that failed is tried again after this long (same paths)
T = TypeVar("T")
Vector = npt.NDArray[np.float32]


class Runtime:
    """The service's shared machinery (pools, decoders, metrics, the PACS client) and the
    generation it serves (:class:`~service.served.Served`: index, catalog, model).

    A request works on :meth:`pinned`, a copy of the runtime bound to the generation that
    was serving when it started, so a switch never mixes two models or two indexes in one
    answer."""

    def __init__(self, settings: ServiceSettings, engine: EngineSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.imaging = engine.imaging
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="medsearch-work")
        # one thread per encoder, so that cheap text queries never wait behind image batches
        self.image_pool = ThreadPoolExecutor(1, thread_name_prefix="medsearch-image")
        self.text_pool = ThreadPoolExecutor(1, thread_name_prefix="medsearch-text")
        self.loader = Loader(
            settings, engine.encoder, engine.catalog, self.image_pool, self.text_pool,
            self.metrics.batch_observer,
        )  # fmt: skip
        # loads, verifies hashes and runs the self-test (as the encoder settings say)
        self.served = self.loader.load(*self._paths())
        self._retired: list[Served] = []
        # the paths a switch to failed, when, and why (tried again after RETRY_SWITCH_S: the
        # new index may not be published yet; said again only when the reason changes)
        self._refused: tuple[tuple[Path, Path], float, str] | None = None
        self.decoders = DecoderPool(self.imaging, settings.workers)
        self.decode_budget = DecodeBudget(
            settings.decode_budget_mb << 20, jobs=DECODES_PER_WORKER * settings.workers
        )
        # one thread per decoder process: decodes never hold up searches in ``pool``
        self.decode_pool = ThreadPoolExecutor(
            settings.workers, thread_name_prefix="medsearch-decode"
        )
        self.links = Links(
            settings.viewer_url_template, settings.wado_base_url or settings.pacs_url
        )
        self.pacs = (
            DicomWebClient(settings.pacs_url, engine.dicomweb) if settings.pacs_url else None
        )
        self._poller: asyncio.Task[None] | None = None
        self.update_index_metrics()

    # -- the generation served: a request's own (pinned), or the latest
    @property
    def encoder(self) -> Encoder:
        return self.served.encoder

    @property
    def catalog(self) -> Catalog:
        return self.served.catalog

    @property
    def searcher(self) -> Searcher:
        return self.served.searcher

    @property
    def series(self) -> SeriesSearcher:
        return self.served.series

    @property
    def recipe(self) -> Recipe:
        return self.served.recipe

    @property
    def qc_reference(self) -> ReferenceCache:
        return self.served.qc_reference

    @property
    def text_cache(self) -> LRU[str, Vector]:
        return self.served.text_cache

    @property
    def thumbnails(self) -> LRU[ThumbnailKey, Thumbnail]:
        return self.served.thumbnails

    def pinned(self) -> Runtime:
        """This runtime bound to the generation serving now (for one request)."""
        return copy.copy(self)

    def _paths(self) -> tuple[Path, Path]:
        return self.settings.index_dir.resolve(), self.settings.model_dir.resolve()

    # -- lifecycle
    def start(self) -> None:
        self.served.start()
        self._poller = asyncio.get_running_loop().create_task(self._poll_index())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for served in (self.served, *self._retired):
            await served.stop()
        self.pool.shutdown(wait=False)
        self.decode_pool.shutdown(wait=False)
        self.image_pool.shutdown(wait=False)
        self.text_pool.shutdown(wait=False)
        self.decoders.close()
        if self.pacs is not None:
            self.pacs.close()

    async def _poll_index(self) -> None:
        while True:
            await asyncio.sleep(self.settings.index_poll_s)
            try:
                if not await self._switch() and await self.run(self.searcher.reload_if_changed):
                    self.update_index_metrics()
            except Exception as exc:  # noqa: BLE001 - keep serving the loaded version
                logger.warning("new index version not loaded: %s", type(exc).__name__)
            await self._close_retired()

    async def _switch(self) -> bool:
        """Switch to the index and model the settings' paths resolve to now, if they moved
        (see :mod:`service.served`); ``False`` when nothing changed or the switch failed."""
        paths = self._paths()
        if paths == self.served.paths:
            return False
        refused = self._refused
        if refused and refused[0] == paths and time.monotonic() - refused[1] < RETRY_SWITCH_S:
            return False
        try:
            new = await self.run(self.loader.load, *paths, self.served)
        except Exception as exc:  # noqa: BLE001 - any failure: keep serving, say why once
            # our refusals say why; another error's text may quote a URL: its type only
            reason = str(exc) if isinstance(exc, MedsearchError) else type(exc).__name__
            if refused is None or refused[0] != paths or refused[2] != reason:
                logger.warning(
                    "index %s with model %s not switched to (still serving %s): %s",
                    *paths, self.served.index_dir, reason,
                )  # fmt: skip
            self._refused = (paths, time.monotonic(), reason)
            return False
        new.start()
        old, self.served = self.served, new  # requests from now on get the new generation
        old.retired_at = time.monotonic()
        self._retired.append(old)
        self._refused = None
        self.update_index_metrics()
        logger.info(
            "switched to index %s (version %s) with model %s",
            new.index_dir, new.searcher.loaded.manifest.version, new.encoder.fingerprint[:16],
        )  # fmt: skip
        return True

    async def _close_retired(self) -> None:
        for served in [s for s in self._retired if s.closable()]:
            self._retired.remove(served)
            await served.stop()
            logger.info("closed the generation of index %s", served.index_dir)

    def update_index_metrics(self) -> None:
        manifest = self.searcher.loaded.manifest
        self.metrics.set_index(manifest.version, int(self.searcher.loaded.index.ntotal))

    # -- work off the event loop
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def queue_depth(self) -> int:
        return self.served.image_batcher.depth + self.served.text_batcher.depth

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
        vector = await self._submit(self.served.text_batcher, text)
        self.text_cache.put(text, vector)
        return vector

    async def embed_texts(self, texts: Sequence[str]) -> list[Vector]:
        return await all_of(self.embed_text(t) for t in texts)

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
            running = self.decode_pool.submit(self.decoders.decode, job)
            try:
                result = await asyncio.wrap_future(running, loop=loop)
            except asyncio.CancelledError:  # one not started does not run; one that has
                if not running.cancel():  # holds its bytes until it ends: so does the budget
                    with contextlib.suppress(Exception):
                        await asyncio.wrap_future(running, loop=loop)
                raise
        if not result.ok:
            reason = result.reason or Reason.UNSUPPORTED
            raise ImageRefused(reason.value, result.detail)
        return result.images[0]

    async def embed_image(self, data: bytes) -> tuple[Vector, DecodedImage]:
        image = await self.decode(data)
        return await self._submit(self.served.image_batcher, image.pixels), image


async def all_of(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Every result, in order; or the first failure, once the others are cancelled and
    have unwound: a request that fails on one of its images or texts leaves no work behind
    to hold up the next request (:meth:`Runtime.decode` runs no queued decode)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


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
