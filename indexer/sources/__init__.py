"""Where images come from: directory trees, zip and tar archives, DICOMDIRs, sidecar CSVs.

:func:`open_source` turns a user's argument into a :class:`Source`, whose items carry a
stable URI and open lazily; :func:`open_uri` reopens one item from its URI;
:class:`SidecarTable` joins a CSV of labels to items by their relative path.
"""

from __future__ import annotations

from indexer.sources.archives import DEFAULT_MAX_MEMBER_BYTES, TarSource, ZipSource
from indexer.sources.base import Source, SourceItem
from indexer.sources.dicomdir import DicomdirSource, is_dicomdir
from indexer.sources.directory import DirectorySource
from indexer.sources.open import open_source, open_uri
from indexer.sources.sidecar import SidecarTable

__all__ = [
    "DEFAULT_MAX_MEMBER_BYTES",
    "DicomdirSource",
    "DirectorySource",
    "SidecarTable",
    "Source",
    "SourceItem",
    "TarSource",
    "ZipSource",
    "is_dicomdir",
    "open_source",
    "open_uri",
]
