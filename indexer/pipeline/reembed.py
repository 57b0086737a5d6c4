"""Re-embedding: another index's items as what a run reads (``medsearch index reembed``).

A model change (the real checkpoint, a new release, another recipe or rendering policy)
is a new index built from the old one's sources, not from the user's memory of them:
:class:`Reembed` lists the *active* items of the old catalog (opened read-only, so the
old index keeps serving untouched) by source URI, with the labels their sidecar CSV gave
them, less what the new catalog has seen, so a killed re-embedding resumes like any
build. Each item is read again from its source (files by path, zip members by URI,
each tar archive streamed once for all its members, PACS instances by URL) and decoded,
rendered and embedded with the new model.

An item whose source has vanished is not dropped silently: it becomes a failure
``cannot read source`` (``source vanished``), counted in :attr:`Reembed.vanished`; that
reason is transient, so a later run tries it again when the source is back.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from indexer.errors import CatalogError, SourceError
from indexer.imaging.types import Reason
from indexer.pipeline.items import ReadItem
from indexer.pipeline.reader import SKIPPED
from indexer.sources import SourceItem, TarSource, open_uri
from indexer.sources.base import Refusal, refuse
from indexer.sources.dicomweb import is_dicomweb
from indexer.sources.directory import open_file
from indexer.sources.uri import parse_uri
from indexer.store.catalog import Catalog
from indexer.store.filters import Filters
from indexer.store.retries import RetryPolicy

VANISHED = "source vanished"
Labels = dict[str, str] | None


@dataclass
class Reembed:
    """The active items of ``old`` (a read-only catalog), one per source URI."""

    old: Catalog
    chunk: int = 500
    vanished: int = 0
    sources: int = 0  # distinct source URIs of the active items
    multi_frame: bool = False  # some source has several active items: built with frames=all
    _tars: dict[str, dict[str, Labels]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for _ in self._sources(scan=True):
            self.sources += 1

    @property
    def frames(self) -> str:
        return "all" if self.multi_frame else "middle"

    def _sources(self, *, scan: bool = False) -> Iterator[tuple[str, Labels]]:
        """(source URI, labels) of the active items, in id order. The items of one source
        (its frames) were committed together, so their ids follow each other."""
        ids = self.old.filter_ids(Filters())
        ids.sort()
        last = None
        for start in range(0, len(ids), self.chunk):
            wanted = [int(i) for i in ids[start : start + self.chunk]]
            records = self.old.items(wanted)
            for record in (records[i] for i in wanted if i in records):
                if record.source_uri == last:
                    self.multi_frame = self.multi_frame or scan
                    continue
                last = record.source_uri
                yield record.source_uri, record.labels

    def check_target(self, catalog: Catalog) -> None:
        """Refuse a new catalog that is the old one (one database named twice, e.g. both
        URLs of one PostgreSQL database spelt differently): told apart by catalog id."""
        old_id = self.old.catalog_id()
        if old_id is not None and catalog.catalog_id() == old_id:
            raise CatalogError(
                "the new index's catalog is the old one (same catalog id): give the new index "
                "its own database in MEDSEARCH_CATALOG_URL; MEDSEARCH_FROM_CATALOG_URL is the "
                "old index's"
            )

    def count(self, catalog: Catalog, retry: RetryPolicy, *, budget_s: float = 30.0) -> int | None:
        """How many sources this run will read (those ``catalog`` has not seen)."""
        deadline = time.monotonic() + budget_s
        todo, pending = 0, []
        for uri, _ in self._sources():
            pending.append(uri)
            if len(pending) >= self.chunk:
                todo += len(pending) - len(catalog.seen_sources(pending, retry))
                pending.clear()
                if time.monotonic() > deadline:
                    return None
        return todo + len(pending) - len(catalog.seen_sources(pending, retry))

    def items(
        self, catalog: Catalog, counts: dict[str, int], retry: RetryPolicy
    ) -> Iterator[ReadItem]:
        """The sources to read again, less those ``catalog`` has seen; tar members last,
        one pass over each archive."""
        pending: list[tuple[str, Labels]] = []

        def flush() -> Iterator[ReadItem]:
            seen = catalog.seen_sources([uri for uri, _ in pending], retry)
            counts[SKIPPED] = counts.get(SKIPPED, 0) + len(seen)
            for uri, labels in pending:
                if uri not in seen:
                    read = self._item(uri, labels)
                    if read is not None:
                        yield read
            pending.clear()

        for source in self._sources():
            pending.append(source)
            if len(pending) >= self.chunk:
                yield from flush()
        yield from flush()
        yield from self._tar_items()

    def _item(self, uri: str, labels: Labels) -> ReadItem | None:
        """A file, zip member or PACS instance to read; ``None`` for a tar member (read
        with the rest of its archive)."""
        if is_dicomweb(uri):
            opener = functools.partial(open_uri, uri)
            return ReadItem(SourceItem(uri=uri, relpath=uri, size=None, open=opener), labels)
        try:
            parsed = parse_uri(uri)
        except SourceError:
            return self._vanished(uri, labels)
        if not os.path.isfile(parsed.path):
            return self._vanished(uri, labels)
        if parsed.member is None:
            path = parsed.path
            item = SourceItem(
                uri=uri, relpath=os.path.basename(path), size=os.path.getsize(path),
                open=functools.partial(open_file, path), local_path=path,
            )  # fmt: skip
            return ReadItem(item, labels)
        if parsed.scheme == "zip":
            opener = functools.partial(open_uri, uri)
            return ReadItem(SourceItem(uri, parsed.member, None, opener), labels)
        self._tars.setdefault(parsed.path, {})[uri] = labels
        return None

    def _tar_items(self) -> Iterator[ReadItem]:
        for archive, wanted in self._tars.items():
            source = TarSource(archive)
            try:
                for item in source:
                    if item.uri in wanted:
                        yield ReadItem(item, wanted.pop(item.uri))
            finally:
                source.close()
            for uri, labels in wanted.items():  # no longer in the archive
                yield self._vanished(uri, labels)
        self._tars.clear()

    def _vanished(self, uri: str, labels: Labels) -> ReadItem:
        self.vanished += 1
        refusal = Refusal(Reason.UNREADABLE, VANISHED)
        opener = functools.partial(refuse, refusal)
        return ReadItem(SourceItem(uri, "", None, opener, refusal=refusal), labels)
