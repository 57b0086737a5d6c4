"""What a watcher's poll of a PACS found, and the instances it hands to the pipeline.

New instances become :class:`~indexer.pipeline.items.ReadItem` s with the item URIs the
DICOMweb source writes (``dicomweb+<base>/studies/S/series/R/instances/I``), so ``index
build`` and ``index watch`` agree on identities: an instance either of them indexed is
skipped by the other, and one re-read after a crash is not indexed twice.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from indexer.pipeline.items import ReadItem
from indexer.pipeline.prune import SourceListing
from indexer.pipeline.reader import SKIPPED
from indexer.sources.base import SourceItem
from indexer.sources.dicomweb_client import DicomWebClient
from indexer.store.catalog import Catalog
from indexer.store.retries import RetryPolicy


@dataclass(frozen=True)
class InstanceRef:
    study: str
    series: str
    sop: str

    @property
    def relpath(self) -> str:
        return f"studies/{self.study}/series/{self.series}/instances/{self.sop}"


@dataclass
class Poll:
    """One poll: the new instances (oldest first), the cursor to record once they are
    indexed, whether the feed has more right away, and what to check for deletions:
    ``listing`` (scopes listed in full now: prune them) or ``reconcile`` (compare every
    study the catalog holds with the PACS)."""

    new: list[InstanceRef]
    cursor: str
    more: bool = False
    listing: SourceListing | None = None
    reconcile: bool = False


class Feed(Protocol):
    kind: str

    def poll(self, cursor: str | None) -> Poll: ...

    def close(self) -> None: ...


def read_cursor(cursor: str | None, key: str) -> str | int | None:
    """The ``key`` of a cursor this kind of feed wrote; ``None`` for another kind's."""
    if cursor is None:
        return None
    try:
        value = json.loads(cursor).get(key)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str | int) else None


@dataclass
class Instances:
    """A :class:`~indexer.pipeline.runner.Listing` of PACS instances, less what the
    catalog has seen; each is fetched with WADO-RS when a decoder asks for it."""

    client: DicomWebClient
    source_uri: str  # dicomweb+<base>
    refs: Sequence[InstanceRef]
    uris: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.uris = [f"{self.source_uri}/{ref.relpath}" for ref in self.refs]

    def _item(self, uri: str, ref: InstanceRef) -> ReadItem:
        def fetch() -> BinaryIO:
            return io.BytesIO(self.client.instance(ref.study, ref.series, ref.sop))

        return ReadItem(SourceItem(uri=uri, relpath=ref.relpath, size=None, open=fetch), None)

    def items(
        self, catalog: Catalog, counts: dict[str, int], retry: RetryPolicy
    ) -> Iterator[ReadItem]:
        seen = catalog.seen_sources(self.uris, retry)
        counts[SKIPPED] = counts.get(SKIPPED, 0) + len(seen & set(self.uris))
        for uri, ref in zip(self.uris, self.refs, strict=True):
            if uri not in seen:
                yield self._item(uri, ref)

    def count(self, catalog: Catalog, retry: RetryPolicy) -> int | None:
        return len(set(self.uris) - catalog.seen_sources(self.uris, retry))

    def check_target(self, catalog: Catalog) -> None:
        """Any catalog will do: the instances come from a PACS, not from a catalog."""

    def unseen(self, catalog: Catalog, retry: RetryPolicy) -> list[InstanceRef]:
        seen = catalog.seen_sources(self.uris, retry)
        return [ref for uri, ref in zip(self.uris, self.refs, strict=True) if uri not in seen]
