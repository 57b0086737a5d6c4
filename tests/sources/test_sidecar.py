"""Sidecar CSV: joining labels to items by relative path or unique file name."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from indexer.errors import SourceError
from indexer.sources import SidecarTable, SourceItem


def _item(relpath: str) -> SourceItem:
    return SourceItem(uri=f"file:///data/{relpath}", relpath=relpath, size=0, open=io.BytesIO)


def _table(tmp_path: Path, text: str, key: str = "path", encoding: str = "utf-8") -> SidecarTable:
    path = tmp_path / "labels.csv"
    path.write_bytes(text.encode(encoding))
    return SidecarTable.load(path, key)


CSV = (
    "label,path,note\n"
    "pneumonia,./chest/a.dcm,\n"
    "normal,chest\\b.dcm,seen twice\n"
    "\n"
    "normal,other/c.dcm,\n"
    "effusion,x/dup.dcm,\n"
    "effusion,y/dup.dcm,\n"
)


def test_matches_by_relpath_then_unique_basename(tmp_path: Path) -> None:
    table = _table(tmp_path, CSV)
    assert table.columns == ["label", "note"] and len(table) == 5
    assert table.lookup(_item("chest/a.dcm")) == {"label": "pneumonia", "note": ""}
    assert table.lookup(_item("./chest/b.dcm")) == {"label": "normal", "note": "seen twice"}
    assert table.lookup(_item("elsewhere/c.dcm")) == {"label": "normal", "note": ""}
    assert table.lookup(_item("c.dcm")) == {"label": "normal", "note": ""}
    assert table.lookup(_item("x/dup.dcm")) == {"label": "effusion", "note": ""}
    assert table.lookup(_item("z/dup.dcm")) is None  # the file name is ambiguous
    assert table.lookup(_item("chest/missing.dcm")) is None


def test_lookup_returns_a_copy(tmp_path: Path) -> None:
    table = _table(tmp_path, CSV)
    row = table.lookup(_item("chest/a.dcm"))
    assert row is not None
    row["label"] = "changed"
    assert table.lookup(_item("chest/a.dcm")) == {"label": "pneumonia", "note": ""}


def test_utf8_with_bom_and_non_ascii(tmp_path: Path) -> None:
    table = _table(tmp_path, "path,befund\nröntgen/ä.dcm,Pleuraerguss\n", encoding="utf-8-sig")
    assert table.columns == ["befund"]
    assert table.lookup(_item("röntgen/ä.dcm")) == {"befund": "Pleuraerguss"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("\n\n", "empty"),
        ("path,label\n", "no rows"),
        ("file,label\na.dcm,x\n", "no column 'path'.*file, label"),
        ("path,label\na.dcm,x\n./a.dcm,y\n", "appears twice.*lines 2 and 3"),
        ("path,label,label\na.dcm,x,y\n", "repeats column"),
        ("path,label\na.dcm,x,extra\n", "line 2 has 3 fields"),
        ("path,label\n,x\n", "line 2 has an empty 'path'"),
    ],
)
def test_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        _table(tmp_path, text)


def test_missing_or_undecodable_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot read"):
        SidecarTable.load(tmp_path / "missing.csv", "path")
    with pytest.raises(SourceError, match="cannot read"):
        _table(tmp_path, "path,label\na.dcm,caf\u00e9\n", encoding="latin-1")
