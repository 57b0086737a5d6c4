"""DICOMDIR: pydicom's real test DICOMDIR, and file IDs that try to leave its folder."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

from indexer.errors import SourceError
from indexer.sources import DicomdirSource, is_dicomdir, open_uri


@pytest.fixture()
def dicomdir_copy(tmp_path: Path, pydicom_files: Path) -> Path:
    """A private copy of pydicom's ``dicomdirtests`` folder; returns its DICOMDIR."""
    folder = tmp_path / "media"
    shutil.copytree(pydicom_files / "dicomdirtests", folder)
    return folder / "DICOMDIR"


def _referenced(dicomdir: Path) -> list[str]:
    records = dcmread(dicomdir).DirectoryRecordSequence
    return ["/".join(r.ReferencedFileID) for r in records if "ReferencedFileID" in r]


def test_enumerates_the_referenced_files(dicomdir_copy: Path) -> None:
    source = DicomdirSource(dicomdir_copy)
    items = list(source)
    expected = _referenced(dicomdir_copy)
    assert len(expected) == 31
    assert [item.relpath for item in items] == expected
    for item in items[:5]:
        path = dicomdir_copy.parent / item.relpath
        assert item.uri == path.as_uri() and item.local_path == str(path)
        assert item.size == path.stat().st_size
        with item.open() as stream, open_uri(item.uri) as again:
            assert stream.read() == again.read() == path.read_bytes()
    assert source.uri == dicomdir_copy.as_uri()


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_file_ids_escaping_the_folder_are_refused(
    tmp_path: Path, dicomdir_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "SECRET").write_bytes(b"secret contents")
    (dicomdir_copy.parent / "LINK").symlink_to(outside)
    ds = dcmread(dicomdir_copy)
    refs = [r for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r]
    refs[0].ReferencedFileID = ["..", "outside", "SECRET"]
    refs[1].ReferencedFileID = ["LINK", "SECRET"]
    refs[2].ReferencedFileID = ["NOFILE", "X"]
    refs[3].ReferencedFileID = ["A/B", "C"]
    ds.save_as(dicomdir_copy)

    with caplog.at_level(logging.WARNING, logger="indexer.sources"):
        relpaths = [item.relpath for item in DicomdirSource(dicomdir_copy)]

    assert len(relpaths) == 31 - 4
    assert not any("SECRET" in path or "NOFILE" in path for path in relpaths)
    warnings = [r for r in caplog.records if r.name == "indexer.sources.dicomdir"]
    assert len(warnings) == 4
    assert "escapes" in caplog.text and "does not exist" in caplog.text
    assert "secret contents" not in caplog.text


def test_is_dicomdir_by_name_or_file_meta(dicomdir_copy: Path, pydicom_files: Path) -> None:
    renamed = dicomdir_copy.parent / "index.dcm"
    shutil.copy(dicomdir_copy, renamed)
    assert is_dicomdir(dicomdir_copy) and is_dicomdir(renamed)
    assert not is_dicomdir(pydicom_files / "CT_small.dcm")
    assert len(list(DicomdirSource(renamed))) == 31


def test_a_plain_dicom_file_is_not_a_dicomdir(pydicom_files: Path) -> None:
    with pytest.raises(SourceError, match="Directory Record Sequence"):
        DicomdirSource(pydicom_files / "CT_small.dcm")


@pytest.mark.parametrize("kept", [0.3, 0.5, 0.9])
def test_a_truncated_dicomdir_is_refused_not_read_in_part(dicomdir_copy: Path, kept: float) -> None:
    """pydicom reads a DICOMDIR cut short without a word: a build indexed 0 or 1 of 3 of
    its files, or failed with a traceback at 90%."""
    data = dicomdir_copy.read_bytes()
    dicomdir_copy.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(SourceError, match="damaged or truncated DICOMDIR"):
        DicomdirSource(dicomdir_copy)


@pytest.mark.parametrize("name", ["DICOMDIR-reordered", "DICOMDIR-nooffset", "DICOMDIR-bigEnd"])
def test_pydicom_s_odd_but_whole_dicomdirs_are_read(dicomdir_copy: Path, name: str) -> None:
    assert len(list(DicomdirSource(dicomdir_copy.parent / name))) == 31
