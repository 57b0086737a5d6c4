"""Zip and tar archives as sources, read lazily and with bounded memory.

Zip: enumeration reads only the central directory. One file handle per source is opened
on first use and shared (``ZipFile`` over a file object we own, so its unlocked reference
count never closes it under another thread); each item's ``open()`` returns a streaming,
seekable member reader and works after iteration has finished. ``close()`` releases the
handle; a later ``open()`` reopens it. The reader inflates 1 MiB per step and never more
than ``max_member_bytes`` + 1 bytes, whatever the member's header claims. Only stored and
deflated members are read: ``zipfile`` inflates bzip2 and lzma without an output bound.

Tar: a compressed tar has no random access, so a tar source streams the archive once
(``tarfile.open(mode="r|")`` over ``gzip``/``bz2``/``lzma``'s readers, which inflate only
what is asked of them, unlike ``tarfile``'s own ``r|*``) and reads each wanted member's
bytes as it passes them. The item's ``open()`` returns a ``BytesIO`` over those bytes, so
memory is bounded by how many items the consumer holds at once (consume them as they
come; do not ``list()`` a large tar source). :func:`open_tar_member` streams the archive
again up to one member.

Both skip directories and junk names (see :mod:`indexer.sources.names`) silently, and
yield what else they will not read as refused items (see :mod:`indexer.sources.base`):
links, FIFOs, devices, encrypted or bzip2/lzma zip members, names that are absolute or
contain ``..``, later members with an already-seen name (``unsupported format``) and
members declared over ``max_member_bytes`` (``too large``). Member names are normalised
(``./a//b`` -> ``a/b``) for ``relpath`` and URIs.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import itertools
import logging
import lzma
import os
import stat
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from indexer.errors import ImageRefused, SourceError
from indexer.imaging.types import Reason
from indexer.sources.base import Refusal, SourceItem, refuse
from indexer.sources.names import is_junk, is_unsafe_member, normalise_relpath
from indexer.sources.uri import archive_uri, member_uri

logger = logging.getLogger(__name__)

DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024
_INFLATE_STEP = 1 << 20  # bytes a zip member reader inflates per step
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
_ZIP_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError)
_ZIP_OPEN_ERRORS = (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError)
_UNSAFE_NAME = Refusal(Reason.UNSUPPORTED, "unsafe member name")
_DUPLICATE_NAME = Refusal(Reason.UNSUPPORTED, "duplicate member name")
_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})  # bounded inflation
_ZIP_KINDS = {
    stat.S_IFLNK: "symlink member",
    stat.S_IFIFO: "fifo member",
    stat.S_IFCHR: "device member",
    stat.S_IFBLK: "device member",
    stat.S_IFSOCK: "socket member",
}
_TAR_KINDS = {
    tarfile.SYMTYPE: "symlink member",
    tarfile.LNKTYPE: "hard link member",
    tarfile.FIFOTYPE: "fifo member",
    tarfile.CHRTYPE: "device member",
    tarfile.BLKTYPE: "device member",
}


@dataclass(frozen=True)
class _Entry:
    """A member as enumeration sees it: its names, and why it is refused (if it is)."""

    relpath: str
    uri: str
    refusal: Refusal | None


class _Names:
    """The member names of one archive as they are met, each member given a unique URI."""

    def __init__(self, scheme: str, archive: Path) -> None:
        self.scheme = scheme
        self.archive = archive
        self._uris: set[str] = set()

    def entry(self, position: int, name: str, refusal: Refusal | None) -> _Entry | None:
        """The entry of the member at ``position`` (1-based), or None for a junk name.

        ``refusal`` says why the member's kind or size is refused, if it is; a bad name
        is refused before that.
        """
        if is_unsafe_member(name):
            logger.warning("refusing member %r of %s: absolute or has '..'", name, self.archive)
            return self._refused(position, name, _UNSAFE_NAME)
        relpath = normalise_relpath(name)
        if not relpath or is_junk(relpath):
            return None
        uri = member_uri(self.scheme, self.archive, relpath)
        if uri in self._uris:
            logger.warning("refusing member %r of %s: a duplicate name", name, self.archive)
            return self._refused(position, relpath, _DUPLICATE_NAME)
        self._uris.add(uri)
        if refusal is not None:
            logger.info("refusing member %r of %s: %s", name, self.archive, refusal.detail)
        return _Entry(relpath, uri, refusal)

    def _refused(self, position: int, relpath: str, refusal: Refusal) -> _Entry:
        uri = member_uri(self.scheme, self.archive, relpath)
        if uri in self._uris:
            uri = f"{uri}#{position}"
        self._uris.add(uri)
        return _Entry(relpath, uri, refusal)


def _item(entry: _Entry, size: int | None, opener: Callable[[], BinaryIO]) -> SourceItem:
    """The item of an entry; a refused one's ``open`` only raises."""
    if entry.refusal is not None:
        opener = functools.partial(refuse, entry.refusal)
    return SourceItem(entry.uri, entry.relpath, size, opener, refusal=entry.refusal)


def _too_large(size: int, cap: int) -> Refusal:
    return Refusal(Reason.TOO_LARGE, f"{size} bytes, over the {cap}-byte member limit")


def _archive_path(path: str | os.PathLike[str], kind: str) -> Path:
    archive = Path(path).expanduser()
    if not archive.is_file():
        raise SourceError(f"{archive}: no such {kind} file")
    return archive.resolve()


def _zip_refusal(info: zipfile.ZipInfo, cap: int) -> Refusal | None:
    """Why a (safely named) zip member will not be read, if it will not."""
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind and kind != stat.S_IFREG:
        return Refusal(Reason.UNSUPPORTED, _ZIP_KINDS.get(kind, "special member"))
    if info.flag_bits & 0x1:
        return Refusal(Reason.UNSUPPORTED, "encrypted member")
    if info.compress_type not in _ZIP_METHODS:
        detail = f"zip compression method {info.compress_type} (only stored or deflated)"
        return Refusal(Reason.UNSUPPORTED, detail)
    if info.file_size > cap:
        return _too_large(info.file_size, cap)
    return None


def _is_zip_dir(info: zipfile.ZipInfo) -> bool:
    return info.is_dir() or stat.S_ISDIR(info.external_attr >> 16)


class CappedMemberReader(io.BufferedIOBase):
    """A zip member's bytes, inflated a step at a time and never past ``cap + 1`` bytes.

    Reading past ``cap`` raises :class:`ImageRefused` (``too large``); data that fails its
    CRC check or does not inflate raises it with ``corrupt``.
    """

    def __init__(self, member: BinaryIO, cap: int) -> None:
        super().__init__()
        self._member = member
        self._cap = cap
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._member.seekable()

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            self._pos = self._member.seek(offset, whence)
        except _ZIP_DAMAGE as exc:
            raise _damaged(exc) from None
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        limit = self._cap + 1 - self._pos
        want = limit if size is None or size < 0 else min(size, limit)
        buffer = io.BytesIO()  # getvalue() hands over its buffer: no second copy
        try:
            while (got := buffer.tell()) < want:
                chunk = self._member.read(min(_INFLATE_STEP, want - got))
                if not chunk:
                    break
                buffer.write(chunk)
        except _ZIP_DAMAGE as exc:
            raise _damaged(exc) from None
        self._pos += buffer.tell()
        if self._pos > self._cap:
            raise ImageRefused(Reason.TOO_LARGE, f"inflates past the {self._cap}-byte limit")
        return buffer.getvalue()

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def close(self) -> None:
        self._member.close()
        super().close()


def _damaged(exc: Exception) -> ImageRefused:
    if isinstance(exc, EOFError):
        what = "truncated"
    elif isinstance(exc, zlib.error):
        what = "bad deflate data"
    else:  # BadZipFile: the inflated bytes do not match the header's CRC-32 (or size)
        what = "bad CRC-32"
    return ImageRefused(Reason.CORRUPT, f"damaged zip member ({what})")


class ZipSource:
    """The members of a zip file (see the module docstring)."""

    def __init__(
        self, path: str | os.PathLike[str], *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    ) -> None:
        self.path = _archive_path(path, "zip")
        if not zipfile.is_zipfile(self.path):
            raise SourceError(f"{self.path}: not a zip file (or a damaged one)")
        self.uri = archive_uri("zip", self.path)
        self.max_member_bytes = max_member_bytes
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
        names = _Names("zip", self.path)
        with self._lock:
            infos = list(self._archive_locked().infolist())
        for position, info in enumerate(infos, 1):
            if _is_zip_dir(info):
                continue
            refusal = _zip_refusal(info, self.max_member_bytes)
            entry = names.entry(position, info.filename, refusal)
            if entry is not None:
                opener = functools.partial(self._open_member, info)
                yield _item(entry, info.file_size, opener)

    def _open_member(self, info: zipfile.ZipInfo) -> BinaryIO:
        with self._lock:
            try:
                member = cast(BinaryIO, self._archive_locked().open(info))
            except _ZIP_OPEN_ERRORS as exc:
                message = f"{self.path}: cannot open member {info.filename!r} ({exc})"
                raise SourceError(message) from exc
        return cast(BinaryIO, CappedMemberReader(member, self.max_member_bytes))


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
        with closing(_stream_members(self.path, self.max_member_bytes)) as members:
            for member, entry, tar in members:
                data = b"" if entry.refusal else _read_member(tar, member, self.path)
                size = member.size if member.isreg() else None
                yield _item(entry, size, functools.partial(io.BytesIO, data))


def _decompressed(path: Path) -> BinaryIO:
    """The tar's bytes, through a reader that inflates only what is asked of it."""
    with open(path, "rb") as fp:
        magic = fp.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return cast(BinaryIO, gzip.open(path, "rb"))
    if magic.startswith(b"BZh"):
        return cast(BinaryIO, bz2.open(path, "rb"))
    if magic.startswith(b"\xfd7zXZ\x00"):
        return cast(BinaryIO, lzma.open(path, "rb"))
    return open(path, "rb")  # closed by the caller


def _tar_refusal(member: tarfile.TarInfo, cap: int) -> Refusal | None:
    """Why a (safely named) tar member will not be read, if it will not."""
    if not member.isreg():
        return Refusal(Reason.UNSUPPORTED, _TAR_KINDS.get(member.type, "special member"))
    if member.size > cap:
        return _too_large(member.size, cap)
    return None


def _stream_members(
    path: Path, cap: int
) -> Generator[tuple[tarfile.TarInfo, _Entry, tarfile.TarFile], None, None]:
    """Stream a tar once, yielding each member but directories and junk, with its entry.

    A member without a refusal is a regular file of at most ``cap`` bytes; its data can be
    read from the tar only until the generator is resumed.
    """
    names = _Names("tar", path)
    try:
        with _decompressed(path) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for position in itertools.count(1):
                if (member := tar.next()) is None:
                    break
                vars(tar)["members"].clear()  # else it keeps every header (not in typeshed)
                if member.isdir():
                    continue
                entry = names.entry(position, member.name, _tar_refusal(member, cap))
                if entry is not None:
                    yield member, entry, tar
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


def open_zip_member(
    path: str, member: str, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> BinaryIO:
    """Open one member of a zip by its normalised name (first match), for reopening a URI."""
    if is_unsafe_member(member):
        raise SourceError(f"refusing zip member {member!r}: absolute or contains '..'")
    wanted = normalise_relpath(member)
    try:
        with zipfile.ZipFile(path) as archive:  # the member reader keeps the file open
            for info in archive.infolist():
                if not _is_zip_dir(info) and normalise_relpath(info.filename) == wanted:
                    refusal = _zip_refusal(info, max_member_bytes)
                    if refusal is not None:
                        raise SourceError(f"{path}: refusing member {member!r}: {refusal.detail}")
                    reader = cast(BinaryIO, archive.open(info))
                    return cast(BinaryIO, CappedMemberReader(reader, max_member_bytes))
    except _ZIP_OPEN_ERRORS as exc:
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
    with closing(_stream_members(archive, max_member_bytes)) as members:
        for info, entry, tar in members:
            if entry.relpath == wanted:
                if entry.refusal is not None:
                    raise SourceError(f"{path}: refusing member {member!r}: {entry.refusal.detail}")
                return io.BytesIO(_read_member(tar, info, archive))
    raise SourceError(f"{path}: no member {member!r} in the tar file")
