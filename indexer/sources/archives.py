"""Zip and tar archives as sources, read lazily: an archive is never loaded whole.

Zip: enumeration reads only the central directory. One file handle per source is opened
on first use and shared (``ZipFile`` over a file object we own, so its unlocked reference
count never closes it under another thread); each item's ``open()`` returns a streaming,
seekable member reader and works after iteration has finished. ``close()`` releases the
handle; a later ``open()`` reopens it.

Tar: a compressed tar has no random access (finding a member means decompressing all
that precedes it), so a tar source streams the archive once with
``tarfile.open(mode="r|*")`` and reads each wanted member's bytes as it passes them. The
item's ``open()`` returns a ``BytesIO`` over those bytes: cheap, seekable, and valid for
as long as the item lives, so memory is bounded by how many items the consumer holds at
once (consume them as they come; do not ``list()`` a large tar source). Members larger
than ``max_member_bytes`` are skipped with a warning. Reopening one member by URI
(:func:`open_tar_member`) streams the archive again up to that member.

Both skip directories, links and other non-regular members, junk names (see
:mod:`indexer.sources.names`) and, with a warning, members whose names are absolute or
contain ``..``. Member names are normalised (``./a//b`` -> ``a/b``) for ``relpath`` and
URIs; a later member with an already-seen name is skipped with a warning.
"""

from __future__ import annotations

import functools
import io
import logging
import lzma
import os
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Generator, Iterator
from contextlib import closing
from pathlib import Path
from typing import BinaryIO, cast

from indexer.errors import SourceError
from indexer.sources.base import SourceItem
from indexer.sources.names import is_junk, is_unsafe_member, normalise_relpath
from indexer.sources.uri import archive_uri, member_uri

logger = logging.getLogger(__name__)

DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


def _wanted(name: str, seen: set[str], archive: Path) -> str | None:
    """The normalised member name to yield, or None to skip it (warning when suspicious)."""
    if is_unsafe_member(name):
        logger.warning("skipping member %r of %s: absolute or contains '..'", name, archive)
        return None
    relpath = normalise_relpath(name)
    if not relpath or is_junk(relpath):
        return None
    if relpath in seen:
        logger.warning("skipping member %r of %s: a duplicate name", name, archive)
        return None
    seen.add(relpath)
    return relpath


def _archive_path(path: str | os.PathLike[str], kind: str) -> Path:
    archive = Path(path).expanduser()
    if not archive.is_file():
        raise SourceError(f"{archive}: no such {kind} file")
    return archive.resolve()


class ZipSource:
    """The members of a zip file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _archive_path(path, "zip")
        if not zipfile.is_zipfile(self.path):
            raise SourceError(f"{self.path}: not a zip file (or a damaged one)")
        self.uri = archive_uri("zip", self.path)
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._zip: zipfile.ZipFile | None = None

    def __repr__(self) -> str:
        return f"ZipSource({str(self.path)!r})"

    def _archive_locked(self) -> zipfile.ZipFile:
        """The shared ``ZipFile``, opened on first use; call with ``self._lock`` held."""
        if self._zip is None:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
                self._zip = zipfile.ZipFile(self._file)
            except (OSError, zipfile.BadZipFile) as exc:
                self._close_locked()
                raise SourceError(f"{self.path}: cannot read the zip file ({exc})") from exc
        return self._zip

    def _close_locked(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._file is not None:
            self._file.close()
        self._zip, self._file = None, None

    def close(self) -> None:
        """Close the shared handle; member readers still open stop working."""
        with self._lock:
            self._close_locked()

    def __iter__(self) -> Iterator[SourceItem]:
        seen: set[str] = set()
        with self._lock:
            infos = list(self._archive_locked().infolist())
        for info in infos:
            if info.is_dir():
                continue
            relpath = _wanted(info.filename, seen, self.path)
            if relpath is None:
                continue
            if info.flag_bits & 0x1:
                logger.warning("skipping member %r of %s: encrypted", relpath, self.path)
                continue
            yield SourceItem(
                uri=member_uri("zip", self.path, relpath),
                relpath=relpath,
                size=info.file_size,
                open=functools.partial(self._open_member, info),
            )

    def _open_member(self, info: zipfile.ZipInfo) -> BinaryIO:
        with self._lock:
            try:
                return cast(BinaryIO, self._archive_locked().open(info))
            except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                message = f"{self.path}: cannot open member {info.filename!r} ({exc})"
                raise SourceError(message) from exc


class TarSource:
    """The regular-file members of a tar, tar.gz, tar.bz2 or tar.xz (see the docstring)."""

    def __init__(
        self, path: str | os.PathLike[str], *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    ) -> None:
        self.path = _archive_path(path, "tar")
        if not tarfile.is_tarfile(self.path):
            raise SourceError(f"{self.path}: not a tar file (plain, gzip, bzip2 or xz)")
        self.uri = archive_uri("tar", self.path)
        self.max_member_bytes = max_member_bytes

    def __repr__(self) -> str:
        return f"TarSource({str(self.path)!r})"

    def close(self) -> None:
        """Nothing to release: the archive is open only while it is being iterated."""

    def __iter__(self) -> Iterator[SourceItem]:
        with closing(_stream_members(self.path)) as members:
            for member, relpath, tar in members:
                if member.size > self.max_member_bytes:
                    logger.warning(
                        "skipping member %r of %s: %d bytes, over the %d-byte limit",
                        *(relpath, self.path, member.size, self.max_member_bytes),
                    )
                    continue
                yield self._item(relpath, member.size, _read_member(tar, member, self.path))

    def _item(self, relpath: str, size: int, data: bytes) -> SourceItem:
        return SourceItem(
            uri=member_uri("tar", self.path, relpath),
            relpath=relpath,
            size=size,
            open=functools.partial(io.BytesIO, data),
        )


def _stream_members(
    path: Path,
) -> Generator[tuple[tarfile.TarInfo, str, tarfile.TarFile], None, None]:
    """Stream a tar once, yielding its wanted regular members with their normalised names.

    The member's data can be read from the tar only until the generator is resumed.
    """
    seen: set[str] = set()
    try:
        with tarfile.open(path, mode="r|*") as tar:
            while (member := tar.next()) is not None:
                vars(tar)["members"].clear()  # else it keeps every header (not in typeshed)
                if member.isdir():
                    continue
                if not member.isreg():
                    logger.info("skipping member %r of %s: not a regular file", member.name, path)
                    continue
                relpath = _wanted(member.name, seen, path)
                if relpath is not None:
                    yield member, relpath, tar
    except _TAR_ERRORS as exc:
        raise SourceError(f"{path}: cannot read the tar file ({exc})") from exc


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    try:
        stream = tar.extractfile(member)
        data = stream.read() if stream is not None else b""
    except _TAR_ERRORS as exc:
        raise SourceError(f"{path}: cannot read member {member.name!r} ({exc})") from exc
    if len(data) != member.size:
        raise SourceError(f"{path}: member {member.name!r} is truncated")
    return data


def open_zip_member(path: str, member: str) -> BinaryIO:
    """Open one member of a zip by its normalised name (first match), for reopening a URI."""
    if is_unsafe_member(member):
        raise SourceError(f"refusing zip member {member!r}: absolute or contains '..'")
    wanted = normalise_relpath(member)
    try:
        with zipfile.ZipFile(path) as archive:  # the member reader keeps the file open
            for info in archive.infolist():
                if not info.is_dir() and normalise_relpath(info.filename) == wanted:
                    return cast(BinaryIO, archive.open(info))
    except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        raise SourceError(f"{path}: cannot open zip member {member!r} ({exc})") from exc
    raise SourceError(f"{path}: no member {member!r} in the zip file")


def open_tar_member(
    path: str, member: str, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> BinaryIO:
    """Read one member of a tar by its normalised name: streams the archive up to it."""
    if is_unsafe_member(member):
        raise SourceError(f"refusing tar member {member!r}: absolute or contains '..'")
    wanted = normalise_relpath(member)
    archive = _archive_path(path, "tar")
    with closing(_stream_members(archive)) as members:
        for info, relpath, tar in members:
            if relpath == wanted:
                if info.size > max_member_bytes:
                    raise SourceError(f"{path}: member {member!r} is over {max_member_bytes} bytes")
                return io.BytesIO(_read_member(tar, info, archive))
    raise SourceError(f"{path}: no member {member!r} in the tar file")
