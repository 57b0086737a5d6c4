"""Building and parsing item URIs (``file://``, ``zip://...!/member``, ``tar://...!/member``).

Paths are percent-encoded from their file-system bytes, so any file name round-trips and
a ``!`` inside a path is written ``%21``: the first ``!/`` always ends the archive path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote_from_bytes, unquote_to_bytes

from indexer.errors import SourceError

ARCHIVE_SCHEMES = frozenset({"zip", "tar"})
MEMBER_SEPARATOR = "!/"


@dataclass(frozen=True)
class ParsedUri:
    """A URI taken apart: ``scheme``, absolute ``path``, and ``member`` for archives."""

    scheme: str
    path: str
    member: str | None = None


def _quote(path: str) -> str:
    return quote_from_bytes(os.fsencode(path), safe="/")


def _unquote(text: str, uri: str) -> str:
    path = os.fsdecode(unquote_to_bytes(text))
    if "\x00" in path:
        raise SourceError(f"malformed source URI {uri!r}: it contains a NUL character")
    return path


def file_uri(path: str | os.PathLike[str]) -> str:
    """``file:///abs/x.dcm`` for an absolute path."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        raise ValueError(f"file URIs need an absolute path, got {text!r}")
    return f"file://{_quote(text)}"


def member_uri(scheme: str, archive: str | os.PathLike[str], member: str) -> str:
    """``zip:///abs/a.zip!/dir/x.dcm`` for a member of an archive at an absolute path."""
    if scheme not in ARCHIVE_SCHEMES:
        raise ValueError(f"unknown archive scheme {scheme!r}")
    base = file_uri(archive).removeprefix("file")
    return f"{scheme}{base}{MEMBER_SEPARATOR}{_quote(member)}"


def archive_uri(scheme: str, archive: str | os.PathLike[str]) -> str:
    """``zip:///abs/a.zip``: the URI of a whole archive, used as its source's ``uri``."""
    return f"{scheme}{file_uri(archive).removeprefix('file')}"


def parse_uri(uri: str) -> ParsedUri:
    """Take an item URI apart, refusing anything that is not one this package writes."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in ARCHIVE_SCHEMES | {"file"}:
        raise SourceError(
            f"malformed source URI {uri!r}: expected file:///abs/path, "
            "zip:///abs/a.zip!/member or tar:///abs/a.tar.gz!/member"
        )
    if not rest.startswith("/"):
        raise SourceError(f"malformed source URI {uri!r}: the path must be absolute (///)")
    if scheme == "file":
        return ParsedUri(scheme, _unquote(rest, uri))
    archive, sep, member = rest.partition(MEMBER_SEPARATOR)
    if not sep or not member:
        raise SourceError(f"malformed source URI {uri!r}: expected {scheme}:///archive!/member")
    return ParsedUri(scheme, _unquote(archive, uri), _unquote(member, uri))
