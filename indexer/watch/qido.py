"""Any DICOMweb server: poll QIDO-RS by study date.

DICOMweb has no change feed. Each poll lists the studies dated from the cursor's day less
``overlap_days`` on (``StudyDate=YYYYMMDD-``) and their instances; what the catalog has
seen is skipped (identities are item URIs), so the overlap costs listings, never
duplicates. The cursor is the day of the last poll. The listing is complete for the
studies it returned, so instances gone from them are pruned, as ``index build --prune``
does. Every ``full_every_s`` the whole PACS is listed instead: that finds studies that
arrive with an old StudyDate, and asks for a reconciliation of every study the catalog
holds (studies deleted whole).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time

from indexer.pipeline.prune import Listings
from indexer.sources.dicomweb import DicomWebSource
from indexer.sources.dicomweb_client import DicomWebSettings
from indexer.watch.feed import InstanceRef, Poll, read_cursor

logger = logging.getLogger(__name__)

CURSOR_KEY = "study_date"


class QidoFeed:
    kind = "qido"

    def __init__(
        self,
        source_uri: str,
        settings: DicomWebSettings,
        *,
        overlap_days: int = 1,
        full_every_s: float = 3600.0,
    ) -> None:
        self.source_uri = source_uri  # dicomweb+<base>, no filters
        self.settings = settings
        self.overlap = dt.timedelta(days=overlap_days)
        self.full_every_s = full_every_s
        self._last_full: float | None = None

    def close(self) -> None:
        pass

    def poll(self, cursor: str | None) -> Poll:
        today = dt.date.today()
        day = read_cursor(cursor, CURSOR_KEY)
        now = time.monotonic()
        full = (
            not isinstance(day, str)
            or self._last_full is None
            or (self.full_every_s > 0 and now - self._last_full >= self.full_every_s)
        )
        spec = self.source_uri
        if not full:
            try:
                since = dt.datetime.strptime(str(day), "%Y%m%d").date() - self.overlap
            except ValueError:
                since, full = today, True
            spec = f"{self.source_uri}?study_date={since:%Y%m%d}-" if not full else spec
        source = DicomWebSource(spec, self.settings)
        listings = Listings()
        listing = listings.start(source)
        refs = []
        try:
            for item in source:
                listings.note(listing, item)
                parts = item.relpath.split("/")
                refs.append(InstanceRef(parts[1], parts[3], parts[5]))
        finally:
            source.close()
        if full:
            self._last_full = now
        cursor_out = json.dumps({CURSOR_KEY: f"{today:%Y%m%d}"})
        return Poll(refs, cursor_out, listing=listing, reconcile=full)
