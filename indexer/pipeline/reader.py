"""Reader stage: the sources' items, minus those the catalog has already seen, with their
labels; and fetching an item's bytes when workers cannot read it by path."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from indexer.errors import ImageRefused, SourceError, SourceUnavailableError
from indexer.imaging.guard import DecodeJob
from indexer.imaging.types import DecodeResult, FileInfo, Reason
from indexer.pipeline.prune import Listings
from indexer.pipeline.sampling import sample_series
from indexer.sources import SidecarTable, SourceItem, open_source
from indexer.store.catalog import Catalog
from indexer.store.retries import RetryPolicy

logger = logging.getLogger(__name__)
SKIPPED = "skipped: already in catalog"


@dataclass
class ReadItem:
    item: SourceItem
    labels: dict[str, str] | None


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
    chunk: int = 256,
) -> Iterator[ReadItem]:
    """The sources' items, less those already indexed or failed and not retried under
    ``retry`` (see :mod:`indexer.store.retries`), with their sidecar labels; with
    ``series_sample``, ``N`` slices per DICOM series (:mod:`indexer.pipeline.sampling`),
    chosen before the catalog's filter so that reruns choose the same; ``listings`` notes
    every item each source lists (``--prune``). The catalog is asked about ``chunk`` items
    at a time."""
    counts = counts if counts is not None else {}
    pending: list[SourceItem] = []

    def flush() -> Iterator[ReadItem]:
        seen = catalog.seen_sources([it.uri for it in pending], retry)
        for it in pending:
            if it.uri in seen:
                counts[SKIPPED] = counts.get(SKIPPED, 0) + 1
                continue
            yield ReadItem(it, sidecar.lookup(it) if sidecar is not None else None)
        pending.clear()

    listed = _listed(specs, listings)
    if series_sample is not None:
        listed = sample_series(listed, series_sample, counts=counts)
    for item in listed:
        pending.append(item)
        if len(pending) >= chunk:
            yield from flush()
    yield from flush()


def fetch(read: ReadItem, max_bytes: int) -> DecodeJob | DecodeResult:
    """What a decoder worker gets: a file on disk by its path; an archive member or PACS
    instance as its bytes (read here, size-capped); or a refusal. An item the source
    refused (a link, a device, an unsafe name, an archive member over its cap) and a member
    that refuses while it inflates become failures with that reason."""
    item = read.item
    if item.refusal is not None:
        reason, detail = item.refusal.reason, item.refusal.detail
        return DecodeResult(file=FileInfo("", item.size or 0), reason=reason, detail=detail)
    if item.local_path is not None:
        return DecodeJob(path=item.local_path)
    if item.size is not None and item.size > max_bytes:
        return DecodeResult(file=FileInfo("", item.size), reason=Reason.TOO_LARGE)
    try:
        with item.open() as fp:
            data = fp.read(max_bytes + 1)
    except SourceUnavailableError:
        raise  # a PACS that is down stops the run; rerunning resumes it
    except ImageRefused as exc:  # a zip member inflating past its cap, or damaged
        file = FileInfo("", item.size or 0)
        return DecodeResult(file=file, reason=Reason(exc.reason), detail=exc.detail)
    except (SourceError, OSError) as exc:
        detail = str(exc)[:200] if isinstance(exc, SourceError) else type(exc).__name__
        return DecodeResult(file=FileInfo("", 0), reason=Reason.UNREADABLE, detail=detail)
    if len(data) > max_bytes:
        return DecodeResult(file=FileInfo("", len(data)), reason=Reason.TOO_LARGE)
    return DecodeJob(data=data)
