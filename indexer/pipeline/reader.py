"""Reader: items of the sources, minus those the catalog has already seen, with labels."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from indexer.sources import SidecarTable, SourceItem, open_source
from indexer.store.catalog import Catalog
from indexer.store.retries import RetryPolicy

logger = logging.getLogger(__name__)


@dataclass
class ReadItem:
    item: SourceItem
    labels: dict[str, str] | None


def read_batches(
    specs: Sequence[str],
    catalog: Catalog,
    *,
    batch_size: int,
    sidecar: SidecarTable | None = None,
    counts: dict[str, int] | None = None,
    retry: RetryPolicy | None = None,
) -> Iterator[list[ReadItem]]:
    """Batches of new items; an item already indexed, or failed and not retried under
    ``retry`` (see :mod:`indexer.store.retries`), is skipped."""
    counts = counts if counts is not None else {}
    pending: list[SourceItem] = []

    def flush() -> list[ReadItem]:
        seen = catalog.seen_sources([it.uri for it in pending], retry)
        out = []
        for it in pending:
            if it.uri in seen:
                counts["skipped: already in catalog"] = (
                    counts.get("skipped: already in catalog", 0) + 1
                )
                continue
            labels = sidecar.lookup(it) if sidecar is not None else None
            out.append(ReadItem(it, labels))
        pending.clear()
        return out

    for spec in specs:
        source = open_source(spec)
        try:
            for item in source:
                pending.append(item)
                if len(pending) >= batch_size:
                    batch = flush()
                    if batch:
                        yield batch
        finally:
            source.close()
    batch = flush()
    if batch:
        yield batch
