"""Deletions found by comparison: every study the catalog holds for a PACS is listed
again with QIDO-RS, and its indexed instances that the PACS no longer lists are removed
(tombstoned; the next publish drops them), by the rules of ``index build --prune``
(:mod:`indexer.pipeline.prune`): never more than ``MAX_SHARE`` of the source's items
without ``force``, and nothing when the PACS cannot be listed.

A study the PACS answers with an empty list is gone whole (Orthanc answers so); one it
refuses (a 4xx) is left alone. One QIDO-RS request per study (and page): run it after a
deletion is suspected and every ``--reconcile`` seconds, not on every poll.
"""

from __future__ import annotations

import logging

from indexer.errors import SourceError, SourceUnavailableError
from indexer.pipeline.prune import SourceListing, prune
from indexer.sources.dicomweb import SERIES_UID, SOP_UID
from indexer.sources.dicomweb_client import DicomWebClient, check_uid, tag_value
from indexer.store.catalog import Catalog

logger = logging.getLogger(__name__)


def pacs_listing(catalog: Catalog, client: DicomWebClient, source_uri: str) -> SourceListing:
    """What the PACS lists now of the studies ``catalog`` holds for ``source_uri``."""
    prefix = f"{source_uri}/studies/"
    indexed = catalog.active_sources(prefix)
    by_study: dict[str, list[str]] = {}
    for uri in indexed:
        by_study.setdefault(uri[len(prefix) :].split("/", 1)[0], []).append(uri)
    listing = SourceListing(source_uri)
    for study, uris in sorted(by_study.items()):
        listing.prefixes.append(f"{prefix}{study}/")
        try:
            records = list(client.qido(f"/studies/{check_uid(study)}/instances", {}))
        except SourceUnavailableError:
            raise
        except SourceError as exc:
            logger.warning("study %s not reconciled: %s", study, exc)
            listing.listed.update(uris)
            continue
        for record in records:
            series, sop = tag_value(record, SERIES_UID), tag_value(record, SOP_UID)
            if series and sop:
                listing.listed.add(f"{prefix}{study}/series/{series}/instances/{sop}")
    return listing


def reconcile(catalog: Catalog, client: DicomWebClient, source_uri: str, *, force: bool) -> int:
    """Remove the indexed instances the PACS no longer has; returns how many items."""
    return prune(catalog, [pacs_listing(catalog, client, source_uri)], force=force)
