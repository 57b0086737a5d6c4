"""Directory trees: recursion, junk, and symlinks that must not lead outside the root."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from indexer.errors import SourceError
from indexer.sources import DirectorySource, open_uri
from tests.sources.conftest import TREE_FILES


def _relpaths(source: DirectorySource) -> list[str]:
    return [item.relpath for item in source]


def test_recursion_skips_junk_and_reads_exact_bytes(
    image_tree: Path, dicom_bytes: dict[str, bytes]
) -> None:
    source = DirectorySource(image_tree)
    items = list(source)
    assert [item.relpath for item in items] == ["top.dcm", "a/mr.dcm", "a/b/plan"]
    for item in items:
        expected = dicom_bytes[TREE_FILES[item.relpath]]
        path = image_tree / item.relpath
        assert item.uri == path.as_uri()
        assert item.local_path == str(path)
        assert item.size == len(expected)
        with item.open() as stream:
            assert stream.read() == expected
        with open_uri(item.uri) as stream:
            assert stream.read() == expected
    assert source.uri == image_tree.as_uri()


def test_uris_are_stable_across_runs(image_tree: Path) -> None:
    first = [item.uri for item in DirectorySource(image_tree)]
    second = [item.uri for item in DirectorySource(str(image_tree) + "/")]
    assert first == second


def test_symlink_escaping_the_root_is_skipped_with_a_warning(
    tmp_path: Path, image_tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.dcm"
    secret.write_bytes(b"DICM-secret-contents")
    (image_tree / "escape_dir").symlink_to(outside)
    (image_tree / "escape_file.dcm").symlink_to(secret)
    (image_tree / "a" / "relative_escape.dcm").symlink_to(Path("../../outside/secret.dcm"))

    with caplog.at_level(logging.WARNING, logger="indexer.sources"):
        relpaths = _relpaths(DirectorySource(image_tree))

    assert relpaths == ["top.dcm", "a/mr.dcm", "a/b/plan"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert {r.name for r in warnings} == {"indexer.sources.directory"}
    skipped = " ".join(r.getMessage() for r in warnings)
    for name in ("escape_dir", "escape_file.dcm", "a/relative_escape.dcm"):
        assert name in skipped
    assert "secret-contents" not in caplog.text


def test_symlinks_inside_the_root_are_followed(image_tree: Path) -> None:
    (image_tree / "link.dcm").symlink_to(image_tree / "a" / "mr.dcm")
    (image_tree / "alias").symlink_to(Path("a/b"))
    relpaths = _relpaths(DirectorySource(image_tree))
    assert relpaths == ["link.dcm", "top.dcm", "a/mr.dcm", "a/b/plan", "alias/plan"]


def test_symlink_loops_end_with_warnings(
    image_tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (image_tree / "self").symlink_to(Path("."))
    (image_tree / "a" / "b" / "up").symlink_to(Path("../.."))
    (image_tree / "loop1").symlink_to(Path("loop2"))
    (image_tree / "loop2").symlink_to(Path("loop1"))
    with caplog.at_level(logging.WARNING, logger="indexer.sources"):
        relpaths = _relpaths(DirectorySource(image_tree))
    assert relpaths == ["top.dcm", "a/mr.dcm", "a/b/plan"]
    for name in ("self", "a/b/up", "loop1", "loop2"):
        assert name in caplog.text


def test_open_refuses_a_link_swapped_outside_after_listing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "x.dcm").write_bytes(b"inside")
    (tmp_path / "outside.dcm").write_bytes(b"outside")
    (item,) = DirectorySource(root)
    (root / "x.dcm").unlink()
    (root / "x.dcm").symlink_to(tmp_path / "outside.dcm")
    with pytest.raises(SourceError, match="outside the source root"):
        item.open()


def test_vanished_file_raises_source_error(image_tree: Path) -> None:
    item = next(iter(DirectorySource(image_tree)))
    os.remove(image_tree / item.relpath)
    with pytest.raises(SourceError, match="cannot open"):
        item.open()


def test_not_a_directory(image_tree: Path) -> None:
    with pytest.raises(SourceError, match="not a directory"):
        DirectorySource(image_tree / "top.dcm")
