"""Name rules: normalising, junk and unsafe archive members."""

from __future__ import annotations

import pytest

from indexer.sources.names import is_junk, is_unsafe_member, normalise_relpath


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b.dcm", "a/b.dcm"),
        ("./a/b.dcm", "a/b.dcm"),
        ("././a//b.dcm", "a/b.dcm"),
        (".\\a\\b.dcm", "a/b.dcm"),
        (" a/b.dcm ", "a/b.dcm"),
    ],
)
def test_normalise_relpath(name: str, expected: str) -> None:
    assert normalise_relpath(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "__MACOSX/a/x.dcm",
        ".DS_Store",
        "a/._x.dcm",
        ".git/config",
        "x/DICOMDIR",
        "notes.TXT",
        "l.csv",
    ],
)
def test_junk(name: str) -> None:
    assert is_junk(name)


@pytest.mark.parametrize("name", ["x.dcm", "a/b/IM000001", "scan.png", "a.b/c.jpg", "MR_small"])
def test_not_junk(name: str) -> None:
    assert not is_junk(name)


@pytest.mark.parametrize(
    "name",
    ["../x.dcm", "a/../../x.dcm", "/etc/passwd", "\\x.dcm", "a\\..\\x", "C:/x.dcm", "a\x00b"],
)
def test_unsafe_members(name: str) -> None:
    assert is_unsafe_member(name)


@pytest.mark.parametrize("name", ["a/x.dcm", "./a/x.dcm", "a..b/x.dcm", "..x.dcm"])
def test_safe_members(name: str) -> None:
    assert not is_unsafe_member(name)
