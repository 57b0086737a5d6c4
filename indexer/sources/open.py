"""From what a user typed to a source, and from an item's URI back to its bytes.

:func:`open_source` picks the source by what the path is: a directory is always a
directory tree (a DICOMDIR inside it is not used as an index); a file is a zip or a tar
by its suffix, or a DICOMDIR by its name or its file meta. Anything else is refused.

:func:`open_uri` reopens one item from the URI a source gave it. ``file://`` and
``zip://`` are cheap; ``tar://`` streams the tar from its start up to the member, which
for a large compressed tar is as slow as reading that much of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from indexer.errors import SourceError
from indexer.sources.archives import (
    DEFAULT_MAX_MEMBER_BYTES,
    TarSource,
    ZipSource,
    open_tar_member,
    open_zip_member,
)
from indexer.sources.base import Source
from indexer.sources.dicomdir import DicomdirSource, is_dicomdir
from indexer.sources.dicomweb import DicomWebSource, is_dicomweb, open_dicomweb_uri
from indexer.sources.directory import DirectorySource, open_file
from indexer.sources.uri import parse_uri

ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
_KINDS = (
    "a directory, a .zip, .tar, .tar.gz/.tgz, .tar.bz2 or .tar.xz archive, a DICOMDIR file, "
    "or dicomweb+http(s)://host/dicom-web"
)


def open_source(spec: str, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Source:
    """The source for a user's argument; ``max_member_bytes`` caps one tar member's size.

    Raises :class:`~indexer.errors.SourceError` for a missing path or an unknown kind.
    """
    if not spec.strip():
        raise SourceError(f"no source given: expected {_KINDS}")
    if is_dicomweb(spec):
        return DicomWebSource(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"{spec}: no such file or directory (expected {_KINDS})")
    if path.is_dir():
        return DirectorySource(path)
    if not path.is_file():
        raise SourceError(f"{spec}: not a regular file or a directory (expected {_KINDS})")
    name = path.name.lower()
    if name.endswith(ZIP_SUFFIXES):
        return ZipSource(path)
    if name.endswith(TAR_SUFFIXES):
        return TarSource(path, max_member_bytes=max_member_bytes)
    if is_dicomdir(path):
        return DicomdirSource(path)
    raise SourceError(f"{spec}: not a kind of source medsearch reads (expected {_KINDS})")


def open_uri(uri: str, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> BinaryIO:
    """Open one item's bytes from its ``file://``, ``zip://`` or ``tar://`` URI.

    The caller closes the stream. Raises :class:`~indexer.errors.SourceError` for a
    malformed URI or a file or member that is not there.
    """
    if is_dicomweb(uri):
        return open_dicomweb_uri(uri)
    parsed = parse_uri(uri)
    if parsed.member is None:
        return open_file(parsed.path)
    if parsed.scheme == "zip":
        return open_zip_member(parsed.path, parsed.member)
    return open_tar_member(parsed.path, parsed.member, max_member_bytes=max_member_bytes)
