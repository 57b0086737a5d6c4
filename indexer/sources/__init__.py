"""Where images come from: directory trees, zip and tar archives, DICOMDIRs, sidecar CSVs.

:func:`open_source` turns a user's argument into a :class:`Source`, whose items carry a
stable URI and open lazily; :func:`open_uri` reopens one item from its URI;
:class:`SidecarTable` joins a CSV of labels to items by their relative path.

All but :class:`Source` and :class:`SourceItem` load on first use (DICOMDIRs import
pydicom, DICOMweb httpx): a process that is handed items does not import them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from indexer.lazy import lazy_names
from indexer.sources.base import Source, SourceItem

if TYPE_CHECKING:
    from indexer.sources.archives import DEFAULT_MAX_MEMBER_BYTES, TarSource, ZipSource
    from indexer.sources.dicomdir import DicomdirSource, is_dicomdir
    from indexer.sources.directory import DirectorySource
    from indexer.sources.open import open_source, open_uri
    from indexer.sources.sidecar import SidecarTable

__getattr__ = lazy_names(
    __name__,
    {
        "archives": ("DEFAULT_MAX_MEMBER_BYTES", "TarSource", "ZipSource"),
        "dicomdir": ("DicomdirSource", "is_dicomdir"),
        "directory": ("DirectorySource",),
        "open": ("open_source", "open_uri"),
        "sidecar": ("SidecarTable",),
    },
)

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
