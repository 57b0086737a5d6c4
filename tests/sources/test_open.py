"""open_source picks the right source; open_uri refuses malformed URIs."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from indexer.errors import SourceError
from indexer.sources import (
    DicomdirSource,
    DirectorySource,
    TarSource,
    ZipSource,
    open_source,
    open_uri,
)
from indexer.sources.uri import parse_uri


def test_kinds(tmp_path: Path, image_tree: Path, pydicom_files: Path) -> None:
    ct = pydicom_files / "CT_small.dcm"
    with zipfile.ZipFile(tmp_path / "a.ZIP", "w") as archive:
        archive.write(ct, "ct.dcm")
    tar_kinds = [(".tar", "w"), (".tgz", "w:gz"), (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz")]
    for suffix, mode in tar_kinds:
        with tarfile.open(tmp_path / f"a{suffix}", mode) as tar:
            tar.add(ct, "ct.dcm")
    shutil.copytree(pydicom_files / "dicomdirtests", tmp_path / "media")

    assert isinstance(open_source(str(image_tree)), DirectorySource)
    assert isinstance(open_source(str(tmp_path / "media")), DirectorySource)
    assert isinstance(open_source(str(tmp_path / "media" / "DICOMDIR")), DicomdirSource)
    zipped = open_source(str(tmp_path / "a.ZIP"))
    assert isinstance(zipped, ZipSource)
    zipped.close()
    for suffix in (".tar", ".tgz", ".tar.bz2", ".tar.xz"):
        source = open_source(str(tmp_path / f"a{suffix}"))
        assert isinstance(source, TarSource)
        assert [item.relpath for item in source] == ["ct.dcm"]


def test_missing_and_unknown(tmp_path: Path, pydicom_files: Path) -> None:
    with pytest.raises(SourceError, match="no such file or directory"):
        open_source(str(tmp_path / "missing"))
    with pytest.raises(SourceError, match="no source given"):
        open_source("  ")
    with pytest.raises(SourceError, match="not a kind of source"):
        open_source(str(pydicom_files / "CT_small.dcm"))


def test_special_characters_round_trip(tmp_path: Path, dicom_bytes: dict[str, bytes]) -> None:
    root = tmp_path / "odd dir!"
    root.mkdir()
    name = "a b!#%?.dcm"
    (root / name).write_bytes(dicom_bytes["MR_small.dcm"])
    with zipfile.ZipFile(tmp_path / "odd!.zip", "w") as archive:
        archive.writestr("dir!/x y.dcm", dicom_bytes["CT_small.dcm"])

    (item,) = DirectorySource(root)
    assert "!" not in item.uri and " " not in item.uri
    assert parse_uri(item.uri).path == str(root / name)
    with open_uri(item.uri) as stream:
        assert stream.read() == dicom_bytes["MR_small.dcm"]
    zipped = ZipSource(tmp_path / "odd!.zip")
    (member,) = zipped
    zipped.close()
    assert member.uri.count("!/") == 1
    assert parse_uri(member.uri).member == "dir!/x y.dcm"
    with open_uri(member.uri) as stream:
        assert stream.read() == dicom_bytes["CT_small.dcm"]


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "/abs/x.dcm",
        "http://example.org/x.dcm",
        "file:relative/x.dcm",
        "file://host/x.dcm",
        "zip:///abs/a.zip",
        "zip:///abs/a.zip!/",
        "tar://rel/a.tar!/x.dcm",
        "file:///abs/x%00.dcm",
    ],
)
def test_malformed_uris_are_refused(uri: str) -> None:
    with pytest.raises(SourceError, match="malformed source URI"):
        open_uri(uri)


def test_uri_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot open"):
        open_uri((tmp_path / "gone.dcm").as_uri())
    with pytest.raises(SourceError):
        open_uri(f"zip://{tmp_path}/gone.zip!/x.dcm")
