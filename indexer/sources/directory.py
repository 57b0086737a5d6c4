"""A directory tree as a source: every file under a root, recursively, in sorted order.

Symlinks are followed only while they stay inside the root: the root is resolved first,
and a symlink whose resolved target lies outside it is skipped with a WARNING that names
the link (never anything read from it). A directory that is already one of the current
directory's ancestors (a symlink loop such as ``x -> ..``) is skipped, so walking always
ends; broken links and links that loop among themselves are skipped too. Items under an
in-root symlink keep the link's path in their URI, like ``find -L`` would print it.

Each item's ``open()`` checks again that the file still resolves inside the root, so a
link swapped after enumeration cannot be used to read outside it.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from indexer.errors import SourceError
from indexer.sources.base import SourceItem
from indexer.sources.names import is_junk
from indexer.sources.uri import file_uri

logger = logging.getLogger(__name__)

_DirId = tuple[int, int]


def open_file(path: str, root: Path | None = None) -> BinaryIO:
    """Open a local file for reading; with ``root``, refuse one that resolves outside it."""
    if root is not None and not Path(os.path.realpath(path)).is_relative_to(root):
        raise SourceError(f"{path}: now resolves outside the source root {root}; not opened")
    try:
        return open(path, "rb")  # the caller owns and closes the stream
    except OSError as exc:
        raise SourceError(f"{path}: cannot open ({exc.strerror or exc})") from exc


class DirectorySource:
    """Every non-junk regular file under ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise SourceError(f"{path}: not a directory")
        self.root = path.resolve()
        self.uri = file_uri(self.root)

    def __repr__(self) -> str:
        return f"DirectorySource({str(self.root)!r})"

    def close(self) -> None:
        """Nothing to release: files are opened per item."""

    def __iter__(self) -> Iterator[SourceItem]:
        root_stat = self.root.stat()
        stack: list[tuple[str, str, frozenset[_DirId]]] = [
            (str(self.root), "", frozenset({(root_stat.st_dev, root_stat.st_ino)}))
        ]
        while stack:
            directory, prefix, ancestors = stack.pop()
            subdirs: list[tuple[str, str, frozenset[_DirId]]] = []
            for entry in self._entries(directory):
                relpath = prefix + entry.name
                if is_junk(relpath):
                    continue
                st = self._stat(entry, relpath)
                if st is None:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    ident = (st.st_dev, st.st_ino)
                    if ident in ancestors:
                        logger.warning("skipping %s: symlink loop back to a parent folder", relpath)
                        continue
                    subdirs.append((entry.path, relpath + "/", ancestors | {ident}))
                elif stat.S_ISREG(st.st_mode):
                    yield SourceItem(
                        uri=file_uri(entry.path),
                        relpath=relpath,
                        size=st.st_size,
                        open=functools.partial(open_file, entry.path, self.root),
                        local_path=entry.path,
                    )
            stack.extend(reversed(subdirs))

    @staticmethod
    def _entries(directory: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(directory) as it:
                return sorted(it, key=lambda entry: entry.name)
        except OSError as exc:
            logger.warning("skipping folder %s: cannot list it (%s)", directory, exc.strerror)
            return []

    def _stat(self, entry: os.DirEntry[str], relpath: str) -> os.stat_result | None:
        """The entry's stat (following links inside the root), or None to skip it."""
        if entry.is_symlink():
            target = Path(os.path.realpath(entry.path))
            if not target.is_relative_to(self.root):
                logger.warning("skipping symlink %s: it leads outside the source folder", relpath)
                return None
        try:
            return entry.stat()
        except OSError as exc:
            logger.warning("skipping %s: cannot stat it (%s)", relpath, exc.strerror)
            return None
