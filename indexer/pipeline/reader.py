"""Reader stage: the sources' items, minus those the catalog has already seen, with their
labels (:class:`~indexer.pipeline.items.ReadItem`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from indexer.pipeline.items import ReadItem
from indexer.pipeline.prune import Listings
from indexer.pipeline.sampling import sample_series
from indexer.sources import SidecarTable, SourceItem, open_source
from indexer.store.catalog import Catalog
from indexer.store.retries import RetryPolicy

logger = logging.getLogger(__name__)
SKIPPED = "skipped: already in catalog"
REMOVED = "skipped: removed earlier"  # index remove, --prune: not indexed again
OWN_FILES = "skipped: the index's own files"  # an index inside a folder it indexes


def _listed(specs: Sequence[str], listings: Listings | None) -> Iterator[SourceItem]:
    for spec in specs:
        source = open_source(spec)
        try:
            if listings is None:
                yield from source
                continue
            listing = listings.start(source)
            for item in source:
                listings.note(listing, item)
                yield item
        finally:
            source.close()


def new_items(
    specs: Sequence[str],
    catalog: Catalog,
    *,
    sidecar: SidecarTable | None = None,
    counts: dict[str, int] | None = None,
    retry: RetryPolicy | None = None,
    series_sample: int | None = None,
    listings: Listings | None = None,
    index_dir: Path | None = None,
    chunk: int = 256,
) -> Iterator[ReadItem]:
    """The sources' items, less those already indexed or failed and not retried under
    ``retry`` (see :mod:`indexer.store.retries`), with their sidecar labels; with
    ``series_sample``, ``N`` slices per DICOM series (:mod:`indexer.pipeline.sampling`),
    chosen before the catalog's filter so that reruns choose the same; ``listings`` notes
    every item each source lists (``--prune``). Files under ``index_dir`` (an index kept in
    a folder it indexes: its catalog, versions, lock) are not items. The catalog is asked
    about ``chunk`` items at a time."""
    own = str(index_dir.resolve()) + os.sep if index_dir is not None else None
    counts = counts if counts is not None else {}
    pending: list[SourceItem] = []

    def flush() -> Iterator[ReadItem]:
        seen = catalog.why_seen([it.uri for it in pending], retry)
        for it in pending:
            if it.uri in seen:
                why = REMOVED if seen[it.uri] == "removed" else SKIPPED
                counts[why] = counts.get(why, 0) + 1
                continue
            yield ReadItem(it, sidecar.lookup(it) if sidecar is not None else None)
        pending.clear()

    listed = _listed(specs, listings)
    if series_sample is not None:
        listed = sample_series(listed, series_sample, counts=counts)
    for item in listed:
        if own is not None and item.local_path is not None and item.local_path.startswith(own):
            counts[OWN_FILES] = counts.get(OWN_FILES, 0) + 1
            continue
        pending.append(item)
        if len(pending) >= chunk:
            yield from flush()
    yield from flush()
