"""A DICOMDIR (DICOM media directory) as a source: the files its records reference.

The DICOMDIR is parsed once, when the source is made (it holds only metadata). Every
directory record with a ``ReferencedFileID`` names a file by path components relative to
the DICOMDIR's folder; records of every type are kept (IMAGE, RT DOSE, SR DOCUMENT, ...)
and the decoder decides what it can index. A file ID is refused, with a warning, when a
component is empty, ``.``, ``..`` or contains a separator, or when the path resolves
(symlinks included) outside the DICOMDIR's folder. Referenced files that do not exist are
skipped with a warning; since file IDs are upper case by the standard and copies on
case-sensitive file systems are often lower case, the lower-case path is tried as well.

Items are plain ``file://`` URIs, the same a directory source over that folder gives.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import MediaStorageDirectoryStorage

from indexer.errors import SourceError
from indexer.sources.base import SourceItem
from indexer.sources.directory import open_file
from indexer.sources.uri import file_uri

logger = logging.getLogger(__name__)

_BAD_COMPONENT_CHARS = ("/", "\\", "\x00")


def is_dicomdir(path: str | os.PathLike[str]) -> bool:
    """Whether a file is a DICOMDIR: named so, or its file meta says Media Storage Directory."""
    if Path(path).name.upper() == "DICOMDIR":
        return True
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return False
    return bool(meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage)


def _components(value: object) -> list[str]:
    """A ReferencedFileID value (one string or a multi-value) as its path components."""
    if isinstance(value, str):
        return [value.strip()]
    if isinstance(value, Sequence):  # pydicom's MultiValue is a MutableSequence
        return [str(part).strip() for part in value]
    return [str(value).strip()]


class DicomdirSource:
    """The files referenced by a DICOMDIR (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        dicomdir = Path(path).expanduser()
        if not dicomdir.is_file():
            raise SourceError(f"{dicomdir}: no such DICOMDIR file")
        self.path = dicomdir.resolve()
        self.root = self.path.parent
        self.uri = file_uri(self.path)
        self._records = self._read_records()

    def __repr__(self) -> str:
        return f"DicomdirSource({str(self.path)!r})"

    def close(self) -> None:
        """Nothing to release: files are opened per item."""

    def _read_records(self) -> list[Dataset]:
        """Every directory record, or a :class:`SourceError`: a DICOMDIR cut short is read
        lazily by pydicom, which stops at the end of the file without a word (a build
        indexed part of it, or failed later with a traceback)."""
        try:
            ds = dcmread(self.path)
            if "DirectoryRecordSequence" not in ds:
                raise SourceError(f"{self.path}: not a DICOMDIR (no Directory Record Sequence)")
            records = list(ds.DirectoryRecordSequence)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as exc:
            raise SourceError(f"{self.path}: not a readable DICOMDIR ({exc})") from exc
        _check_offsets(self.path, ds, records)
        return records

    def __iter__(self) -> Iterator[SourceItem]:
        seen: set[str] = set()
        for index, record in enumerate(self._records):
            file_id = record.get("ReferencedFileID")
            if file_id is None:
                continue
            relpath = self._relpath(_components(file_id), index)
            if relpath is None or relpath in seen:
                continue
            seen.add(relpath)
            path = os.path.join(self.root, relpath)
            yield SourceItem(
                uri=file_uri(path),
                relpath=relpath,
                size=os.path.getsize(path),
                open=functools.partial(open_file, path, self.root),
                local_path=path,
            )

    def _relpath(self, parts: list[str], index: int) -> str | None:
        """The referenced file's path relative to the DICOMDIR's folder, or None to skip."""
        if not parts or any(
            part in ("", ".", "..") or any(c in part for c in _BAD_COMPONENT_CHARS)
            for part in parts
        ):
            logger.warning("skipping DICOMDIR record %d: malformed file ID %r", index, parts)
            return None
        for candidate in ("/".join(parts), "/".join(parts).lower()):
            path = self.root / candidate
            if not Path(os.path.realpath(path)).is_relative_to(self.root):
                logger.warning("skipping DICOMDIR record %d: file ID escapes its folder", index)
                return None
            if path.is_file():
                return candidate
        logger.warning("skipping DICOMDIR record %d: %s does not exist", index, "/".join(parts))
        return None


_OFFSETS = ("OffsetOfTheNextDirectoryRecord", "OffsetOfReferencedLowerLevelDirectoryEntity")


def _check_offsets(path: Path, ds: Dataset, records: list[Dataset]) -> None:
    """No record points past the end of the file: otherwise the file was cut short, and
    the records lost with its end would be left out silently. (Offsets are not otherwise
    checked: the records are read in order, and a DICOMDIR edited by a tool that did not
    update them is still read whole.)"""
    size = path.stat().st_size
    wanted = {int(ds.get("OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity") or 0)}
    wanted.update(int(record.get(name) or 0) for record in records for name in _OFFSETS)
    beyond = [offset for offset in wanted if offset >= size]
    if beyond:
        raise SourceError(
            f"{path}: a damaged or truncated DICOMDIR (it refers to {len(beyond)} directory "
            f"records past its end, {size} bytes): repair or recreate it, or index the "
            "folder instead"
        )
