"""The watcher's loop: poll the feed, index the new instances in small batches, apply
deletions, record the cursor; sleep ``interval_s``; back off while the PACS is away.

Order of effects, for crash safety: a batch's items are committed and the index published
(:func:`~indexer.pipeline.runner.run_build`), deletions are applied and published, and
only then is the cursor recorded in the catalog (``sync_cursors``). A watcher killed at
any point re-reads the changes after its last recorded cursor; what the catalog already
holds is skipped by item URI, so nothing is missed and nothing is indexed twice. At start
the index is published from the catalog (rows a killed watcher committed but had not
published) and every study held is reconciled (deletions while it was down).

The model is loaded once per process; each batch's run spawns its decoder workers.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from indexer.encoders.encoder import Encoder
from indexer.errors import MedsearchError, SourceUnavailableError
from indexer.pipeline.prune import prune
from indexer.pipeline.runner import BuildOptions, binding_for, open_catalog, run_build
from indexer.settings import EncoderSettings, ImagingSettings
from indexer.sources.dicomweb import split_spec
from indexer.sources.dicomweb_client import DicomWebClient, DicomWebSettings
from indexer.store.retries import RetryPolicy
from indexer.store.sync import index_store, sync_index
from indexer.watch.feed import Feed, InstanceRef, Instances, Poll
from indexer.watch.orthanc import OrthancFeed, detect
from indexer.watch.qido import QidoFeed
from indexer.watch.reconcile import reconcile

logger = logging.getLogger(__name__)


@dataclass
class WatchOptions:
    source: str  # dicomweb+http(s)://host/dicom-web, no filters
    index_dir: Path
    model_dir: Path
    interval_s: float = 5.0  # between polls once the feed has nothing more
    batch: int = 32  # instances per run (Orthanc: changes read per poll)
    workers: int = 1  # decoder processes per run
    reconcile_s: float = 3600.0  # full deletion check (0: only at start and when suspected)
    orthanc: str = "auto"  # auto (probe /system), off (QIDO-RS), or Orthanc's REST root
    force: bool = False  # remove more than prune.MAX_SHARE of the source at once
    max_backoff_s: float = 60.0
    imaging: ImagingSettings = field(default_factory=ImagingSettings)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    dicomweb: DicomWebSettings | None = None


class Watcher:
    def __init__(self, options: WatchOptions, encoder: Encoder | None = None) -> None:
        self.options = options
        base, filters = split_spec(options.source)
        if filters:
            raise MedsearchError(
                "index watch follows the whole PACS: give its DICOMweb root, without filters"
            )
        self.source_uri = "dicomweb+" + base
        self.settings = options.dicomweb or DicomWebSettings()
        self.encoder = encoder or Encoder.load(options.model_dir, options.encoder)
        self.binding = binding_for(self.encoder, None)
        self.client = DicomWebClient(base, self.settings)
        self.feed: Feed | None = None
        self.stopping = False
        self.retry = RetryPolicy()
        self._reconciled_at: float | None = None  # None: reconcile at start
        self.catalog = open_catalog(options.index_dir)
        try:
            self.catalog.bind_model(self.binding)
            sample = self.catalog.series_sample(None)
            if sample is not None:
                raise MedsearchError(
                    f"this index samples {sample} slices per series; index watch indexes "
                    "every instance: watch into another index"
                )
            if index_store(options.index_dir).current() is not None or self.catalog.count():
                sync_index(self.catalog, options.index_dir, self.binding)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()
        self.client.close()
        self.catalog.close()

    # -- the loop
    def run(self) -> None:
        """Poll until SIGINT or SIGTERM (the batch in hand is finished first)."""
        delay = self.options.interval_s
        with self._signals():
            while not self.stopping:
                try:
                    more = self.cycle()
                except SourceUnavailableError as exc:
                    logger.warning("%s; polling again in %.1f s", exc, delay)
                    self._sleep(delay)
                    delay = min(max(2 * delay, 1.0), self.options.max_backoff_s)
                    continue
                delay = self.options.interval_s
                if not more:
                    self._sleep(self.options.interval_s)
        logger.info("stopped")

    def cycle(self) -> bool:
        """One poll and its effects; ``True`` when the feed has more right away."""
        if self.feed is None:
            self.feed = self._open_feed()
        poll = self.feed.poll(self.catalog.cursor(self.source_uri))
        self._index(poll.new)
        removed = self._deletions(poll)
        if removed:
            manifest = sync_index(self.catalog, self.options.index_dir, self.binding)
            logger.info("removed %d; index %s", removed, manifest.get("version"))
        self.catalog.set_cursor(self.source_uri, poll.cursor)
        return poll.more

    def _open_feed(self) -> Feed:
        choice = self.options.orthanc
        root = None
        if choice == "auto":
            root = detect(self.client.base_url, self.settings)
        elif choice != "off":
            root = choice.rstrip("/")
        if root is not None:
            return OrthancFeed(root, self.settings, limit=self.options.batch)
        logger.info("polling %s with QIDO-RS by study date", self.source_uri)
        return QidoFeed(self.source_uri, self.settings, full_every_s=self.options.reconcile_s)

    def _index(self, refs: list[InstanceRef]) -> None:
        unseen = Instances(self.client, self.source_uri, refs).unseen(self.catalog, self.retry)
        batch = self.options.batch
        for start in range(0, len(unseen), batch):
            chunk = Instances(self.client, self.source_uri, unseen[start : start + batch])
            report = run_build(self._build_options(chunk), encoder=self.encoder)
            logger.info(
                "indexed %d (failed %d) in %.1f s; index %s",
                report.indexed, sum(report.failed.values()), report.seconds,
                report.index.get("version"),
            )  # fmt: skip

    def _build_options(self, listing: Instances) -> BuildOptions:
        o = self.options
        return BuildOptions(
            sources=[self.source_uri], index_dir=o.index_dir, model_dir=o.model_dir,
            workers=o.workers, batch_size=o.batch, progress=False, command="watch",
            listing=listing, imaging=o.imaging, encoder=o.encoder, retry=self.retry,
        )  # fmt: skip

    def _deletions(self, poll: Poll) -> int:
        removed = 0
        listing = poll.listing
        if listing is not None:
            removed += self._guarded(
                lambda: prune(self.catalog, [listing], force=self.options.force)
            )
        now = time.monotonic()
        every = self.options.reconcile_s
        due = self._reconciled_at is None or (every > 0 and now - self._reconciled_at >= every)
        if (poll.reconcile or due) and not poll.more:
            self._reconciled_at = now
            removed += self._guarded(
                lambda: reconcile(
                    self.catalog, self.client, self.source_uri, force=self.options.force
                )
            )
        return removed

    @staticmethod
    def _guarded(step: Callable[[], int]) -> int:
        """A removal refused for its size is logged, and the watcher goes on."""
        try:
            return step()
        except SourceUnavailableError:
            raise
        except MedsearchError as exc:
            logger.warning("%s", exc)
            return 0

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, _frame: FrameType | None) -> None:
            logger.info("%s: stopping after this batch", signal.Signals(signum).name)
            self.stopping = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
