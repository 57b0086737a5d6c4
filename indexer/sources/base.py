"""What every source yields: items with a stable source URI that can be opened lazily.

A source enumerates image files without reading them; the decoder opens each item when
it needs the bytes. URIs are stable across runs, so that the catalog can recognise an item
it has already indexed:

- ``file:///abs/path/x.dcm`` for a file in a directory tree,
- ``zip:///abs/path/a.zip!/member/x.dcm`` for a zip member,
- ``tar:///abs/path/a.tar.gz!/member/x.dcm`` for a tar member,
- DICOMDIR entries are plain ``file://`` URIs of the referenced files.

Paths in URIs are percent-encoded (``urllib.parse.quote``, ``/`` kept), so a ``!`` in a
file name cannot be confused with the ``!/`` that separates an archive from its member.

A source may also yield an item it refuses to read (an archive's symlink, device or
over-size member, an unsafe or duplicate member name): such an item carries a
:class:`Refusal`, is never opened, and is recorded as a failure like any file that does
not decode. A refused member whose URI would repeat an earlier one gets ``#<n>``, its
position in the archive, appended (a real name's ``#`` is always written ``%23``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, NoReturn, Protocol

from indexer.errors import ImageRefused
from indexer.imaging.types import Reason


@dataclass(frozen=True)
class Refusal:
    """Why a source will not hand over an item's bytes: a fixed reason and a short detail."""

    reason: Reason  # UNSUPPORTED for links, devices and bad names; TOO_LARGE for size
    detail: str  # e.g. "symlink member"; never carries the file's content


def refuse(refusal: Refusal) -> NoReturn:
    """The ``open`` of a refused item: raises :class:`ImageRefused`, touches nothing."""
    raise ImageRefused(refusal.reason, refusal.detail)


@dataclass(frozen=True)
class SourceItem:
    """One file of a source, not yet read."""

    uri: str  # stable source URI (see module docstring)
    relpath: str  # path relative to the source root (or the member name); sidecar CSV key
    size: int | None  # bytes, when known without reading
    open: Callable[[], BinaryIO]  # opens the item's bytes for reading (caller closes)
    local_path: str | None = None  # a real file on disk, when the item is one
    refusal: Refusal | None = None  # set when the source will not read it (never opened)


class Source(Protocol):
    """An enumerable collection of image files."""

    uri: str  # the source's own URI, e.g. file:///data/archive or zip:///data/a.zip

    def __iter__(self) -> Iterator[SourceItem]: ...

    def close(self) -> None:
        """Release cached handles (a zip's open file). Items opened later reopen them."""
        ...
