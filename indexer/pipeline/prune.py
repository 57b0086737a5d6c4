"""Deletions reach the index (``index build --prune``): items whose source is gone.

While a build lists its sources, every item URI listed is noted per source. Afterwards,
the catalog's active items *in the scope of a source* that were not listed are removed
(tombstoned, as ``index remove`` does; the next publish drops them from the index and
their series are pooled again):

- a folder: the items under it (``file:///root/...``);
- a zip or tar archive: its members (``zip:///a.zip!/...``);
- a PACS (DICOMweb): the instances of the studies its query returned this time (a study
  the query no longer returns is left alone: the query may have changed, or its date
  range moved on; remove such studies with ``index remove --uid``);
- a DICOMDIR: not pruned (its files may be shared with a folder source).

Never a mass deletion by accident: a root that cannot be listed (a missing path, a PACS
that is down) stops the build before anything is removed, and removing more than
``MAX_SHARE`` of a source's items needs ``--force`` (an unmounted disk lists as an empty
folder). Every source is checked before anything is removed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from indexer.errors import MedsearchError
from indexer.sources import Source, SourceItem
from indexer.sources.dicomdir import DicomdirSource
from indexer.sources.dicomweb import DicomWebSource
from indexer.sources.uri import MEMBER_SEPARATOR
from indexer.store.catalog import Catalog

logger = logging.getLogger(__name__)

MAX_SHARE = 0.25  # of a source's indexed items removed by one run, without --force
PRUNED = "pruned: source gone"


@dataclass
class SourceListing:
    """What one source listed in this run, and the URI prefixes it answers for."""

    uri: str
    prefixes: list[str] = field(default_factory=list)
    listed: set[str] = field(default_factory=set)
    studies: set[str] = field(default_factory=set)  # DICOMweb: the studies listed
    prunable: bool = True


class Listings:
    """Collects the item URIs each source lists (the reader calls :meth:`note`)."""

    def __init__(self) -> None:
        self.sources: list[SourceListing] = []

    def start(self, source: Source) -> SourceListing:
        listing = SourceListing(source.uri)
        if isinstance(source, DicomdirSource):
            listing.prunable = False
        elif isinstance(source, DicomWebSource):
            listing.prefixes = []  # per study, filled as studies are listed
        elif source.uri.startswith(("zip:", "tar:")):
            listing.prefixes = [source.uri + MEMBER_SEPARATOR]
        else:
            listing.prefixes = [source.uri.rstrip("/") + "/"]
        self.sources.append(listing)
        return listing

    @staticmethod
    def note(listing: SourceListing, item: SourceItem) -> None:
        listing.listed.add(item.uri)
        if item.relpath.startswith("studies/") and listing.uri.startswith("dicomweb+"):
            study = item.relpath.split("/")[1]
            if study not in listing.studies:
                listing.studies.add(study)
                listing.prefixes.append(f"{listing.uri}/studies/{study}/")


def _gone(catalog: Catalog, listing: SourceListing) -> tuple[list[str], int]:
    """The active source URIs in the listing's scope that it did not list, and how many
    active source URIs its scope holds."""
    in_scope = set()
    for prefix in listing.prefixes:
        in_scope.update(catalog.active_sources(prefix))
    return sorted(in_scope - listing.listed), len(in_scope)


def prune(catalog: Catalog, listings: Iterable[SourceListing], *, force: bool) -> int:
    """Remove the items whose source is gone; returns how many items were removed."""
    plans = []
    for listing in listings:
        if not listing.prunable:
            logger.info("not pruned: %s (a DICOMDIR)", listing.uri)
            continue
        gone, total = _gone(catalog, listing)
        if gone and len(gone) > MAX_SHARE * total and not force:
            raise MedsearchError(
                f"--prune would remove {len(gone)} of the {total} indexed files of "
                f"{listing.uri} ({len(gone) / total:.0%}, over {MAX_SHARE:.0%}): is it "
                "mounted and complete? Nothing was removed; pass --force to remove them"
            )
        plans.append((listing.uri, gone))
    removed = 0
    for uri, gone in plans:
        count = catalog.remove_sources(gone)
        if count:
            logger.info("pruned %d items of %s: their files are gone", count, uri)
        removed += count
    return removed
