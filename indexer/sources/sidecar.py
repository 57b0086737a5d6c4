"""A sidecar CSV of labels, joined to source items by their relative path.

The CSV is UTF-8 (a byte-order mark is allowed) with a header row. One column, the key,
holds each row's image path; the others are label columns, returned as strings exactly
as written ('' stays ''). Keys and item paths are compared after normalising both (see
:func:`indexer.sources.names.normalise_relpath`: forward slashes, no leading ``./``). An
item whose path is not a key falls back to its file name, when exactly one key has that
file name. Blank lines are ignored; a row with more or fewer fields than the header, an
empty or duplicate key, a missing key column or an empty file is refused.
"""

from __future__ import annotations

import csv
import os
import posixpath
from collections import Counter
from pathlib import Path

from indexer.errors import SourceError
from indexer.sources.base import SourceItem
from indexer.sources.names import normalise_relpath


class SidecarTable:
    """Label rows keyed by normalised image path; build with :meth:`load`."""

    def __init__(self, key: str, columns: list[str], rows: dict[str, dict[str, str]]) -> None:
        self.key = key
        self._columns = list(columns)
        self._rows = rows
        names = Counter(posixpath.basename(path) for path in rows)
        self._by_name = {
            posixpath.basename(path): path for path in rows if names[posixpath.basename(path)] == 1
        }

    @property
    def columns(self) -> list[str]:
        """The label columns, in file order (every column but the key)."""
        return list(self._columns)

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, item: SourceItem) -> dict[str, str] | None:
        """The item's labels, by relative path or else by a file name unique in the CSV."""
        relpath = normalise_relpath(item.relpath)
        row = self._rows.get(relpath)
        if row is None:
            path = self._by_name.get(posixpath.basename(relpath))
            row = None if path is None else self._rows[path]
        return None if row is None else dict(row)

    @classmethod
    def load(cls, path: str | os.PathLike[str], key: str) -> SidecarTable:
        """Read a CSV whose column ``key`` holds image paths (see the module docstring)."""
        csv_path = Path(path)
        try:
            with csv_path.open(encoding="utf-8-sig", newline="") as handle:
                lines = [(number, row) for number, row in enumerate(csv.reader(handle), 1) if row]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise SourceError(f"{csv_path}: cannot read the sidecar CSV ({exc})") from exc
        if not lines:
            raise SourceError(f"{csv_path}: the sidecar CSV is empty (expected a header row)")
        header = [name.strip() for name in lines[0][1]]
        _check_header(csv_path, header, key)
        key_at = header.index(key)
        columns = [name for name in header if name != key]
        rows: dict[str, dict[str, str]] = {}
        first_seen: dict[str, int] = {}
        for number, fields in lines[1:]:
            if len(fields) != len(header):
                raise SourceError(
                    f"{csv_path}: line {number} has {len(fields)} fields, the header {len(header)}"
                )
            image = normalise_relpath(fields[key_at])
            if not image:
                raise SourceError(f"{csv_path}: line {number} has an empty {key!r}")
            if image in rows:
                raise SourceError(
                    f"{csv_path}: {key!r} {image!r} appears twice "
                    f"(lines {first_seen[image]} and {number})"
                )
            first_seen[image] = number
            rows[image] = {n: v for n, v in zip(header, fields, strict=True) if n != key}
        if not rows:
            raise SourceError(f"{csv_path}: the sidecar CSV has a header but no rows")
        return cls(key, columns, rows)


def _check_header(path: Path, header: list[str], key: str) -> None:
    duplicates = sorted(name for name, count in Counter(header).items() if count > 1)
    if duplicates:
        raise SourceError(f"{path}: the header repeats column(s) {', '.join(duplicates)}")
    if key not in header:
        raise SourceError(
            f"{path}: no column {key!r} for the image path; the columns are {', '.join(header)}"
        )
