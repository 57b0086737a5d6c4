"""Zip and tar sources: enumeration, exact bytes, stable URIs, refused and junk members."""

from __future__ import annotations

import io
import logging
import tarfile
import zipfile
from pathlib import Path

import pytest

from indexer.errors import ImageRefused, SourceError
from indexer.imaging.types import Reason
from indexer.sources import SourceItem, TarSource, ZipSource, open_uri
from indexer.sources.uri import member_uri

WANTED = {"scans/ct.dcm": "CT_small.dcm", "scans/deep/mr": "MR_small.dcm", "plan.dcm": "rtplan.dcm"}
UNSAFE = ("../evil.dcm", "/abs.dcm")  # in both archives; the zip also has scans/../../up.dcm


def _make_zip(path: Path, dicom: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("scans/", b"")
        for member, name in WANTED.items():
            archive.writestr(member, dicom[name])
        archive.writestr("__MACOSX/scans/._ct.dcm", b"junk")
        archive.writestr("scans/.DS_Store", b"junk")
        archive.writestr("../evil.dcm", dicom["CT_small.dcm"])
        archive.writestr("/abs.dcm", dicom["CT_small.dcm"])
        archive.writestr("scans/../../up.dcm", dicom["CT_small.dcm"])
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _make_tar(path: Path, dicom: dict[str, bytes], mode: str) -> Path:
    with tarfile.open(path, mode) as tar:
        folder = tarfile.TarInfo("./scans")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for member, name in WANTED.items():
            _add(tar, "./" + member if member.startswith("scans/") else member, dicom[name])
        _add(tar, "__MACOSX/._plan.dcm", b"junk")
        _add(tar, "../evil.dcm", dicom["CT_small.dcm"])
        _add(tar, "/abs.dcm", dicom["CT_small.dcm"])
        link = tarfile.TarInfo("link.dcm")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
        _add(tar, "plan.dcm", b"a later duplicate")
    return path


def _check_items(
    source: ZipSource | TarSource, archive: Path, scheme: str, dicom: dict[str, bytes]
) -> None:
    items = [item for item in source if item.refusal is None]
    assert sorted(item.relpath for item in items) == sorted(WANTED)
    for item in items:
        expected = dicom[WANTED[item.relpath]]
        assert item.uri == member_uri(scheme, archive, item.relpath)
        assert item.uri.startswith(f"{scheme}://{archive}!/")
        assert item.size == len(expected)
        assert item.local_path is None
        with item.open() as stream:
            assert stream.read() == expected
        with item.open() as stream:  # again, after the first reader is done
            assert stream.read() == expected
        with open_uri(item.uri) as stream:
            assert stream.read() == expected
    everything = list(source)
    assert [item.uri for item in source] == [item.uri for item in everything]
    assert len({item.uri for item in everything}) == len(everything)  # refused ones too


def _refused(source: ZipSource | TarSource) -> dict[str, SourceItem]:
    return {item.relpath: item for item in source if item.refusal is not None}


def _check_refused(item: SourceItem, reason: Reason, detail: str) -> None:
    assert item.refusal is not None
    assert (item.refusal.reason, item.refusal.detail) == (reason, detail)
    with pytest.raises(ImageRefused) as refused:  # never opens the member
        item.open()
    assert (refused.value.reason, refused.value.detail) == (reason, detail)


def test_zip_members(
    tmp_path: Path, dicom_bytes: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    archive = _make_zip(tmp_path / "a.zip", dicom_bytes)
    source = ZipSource(archive)
    assert source.uri == f"zip://{archive}"
    with caplog.at_level(logging.WARNING, logger="indexer.sources"):
        _check_items(source, archive, "zip", dicom_bytes)
    for name in (*UNSAFE, "scans/../../up.dcm"):
        assert repr(name) in caplog.text
    refused = _refused(source)
    assert sorted(refused) == sorted((*UNSAFE, "scans/../../up.dcm"))
    for name, item in refused.items():
        _check_refused(item, Reason.UNSUPPORTED, "unsafe member name")
        assert item.uri == member_uri("zip", archive, name)  # the raw name: no collision
    assert refused["/abs.dcm"].uri.endswith("!//abs.dcm")
    source.close()


def test_zip_items_open_after_iteration_and_close(
    tmp_path: Path, dicom_bytes: dict[str, bytes]
) -> None:
    source = ZipSource(_make_zip(tmp_path / "a.zip", dicom_bytes))
    items = {item.relpath: item for item in source}
    source.close()
    with items["plan.dcm"].open() as stream:
        stream.seek(128)
        assert stream.read(4) == b"DICM"
    source.close()


TAR_KINDS = [(".tar.gz", "w:gz"), (".tar", "w"), (".tar.bz2", "w:bz2"), (".txz", "w:xz")]


@pytest.mark.parametrize(("suffix", "mode"), TAR_KINDS)
def test_tar_members(
    tmp_path: Path,
    dicom_bytes: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
    suffix: str,
    mode: str,
) -> None:
    archive = _make_tar(tmp_path / f"a{suffix}", dicom_bytes, mode)
    source = TarSource(archive)
    assert source.uri == f"tar://{archive}"
    with caplog.at_level(logging.WARNING, logger="indexer.sources"):
        _check_items(source, archive, "tar", dicom_bytes)
    for name in UNSAFE:
        assert repr(name) in caplog.text
    assert "duplicate" in caplog.text
    refused = {item.uri: item for item in source if item.refusal is not None}
    assert len(refused) == 4
    for name in UNSAFE:
        _check_refused(refused[member_uri("tar", archive, name)], *UNSAFE_REFUSAL)
    _check_refused(refused[member_uri("tar", archive, "link.dcm")], *SYMLINK_REFUSAL)
    duplicate = member_uri("tar", archive, "plan.dcm") + "#9"  # its position in the tar
    _check_refused(refused[duplicate], Reason.UNSUPPORTED, "duplicate member name")


UNSAFE_REFUSAL = (Reason.UNSUPPORTED, "unsafe member name")
SYMLINK_REFUSAL = (Reason.UNSUPPORTED, "symlink member")


def test_tar_member_over_the_cap_is_refused_unread(
    tmp_path: Path, dicom_bytes: dict[str, bytes]
) -> None:
    archive = _make_tar(tmp_path / "a.tgz", dicom_bytes, "w:gz")
    cap = len(dicom_bytes["MR_small.dcm"])
    items = {item.relpath: item for item in TarSource(archive, max_member_bytes=cap)}
    big = items["scans/ct.dcm"]
    size = len(dicom_bytes["CT_small.dcm"])
    _check_refused(big, Reason.TOO_LARGE, f"{size} bytes, over the {cap}-byte member limit")
    assert big.size == size
    assert items["scans/deep/mr"].refusal is None
    with pytest.raises(SourceError, match="over"):
        open_uri(member_uri("tar", archive, "scans/ct.dcm"), max_member_bytes=cap)


def test_truncated_tar_gz_raises_source_error(
    tmp_path: Path, dicom_bytes: dict[str, bytes]
) -> None:
    archive = _make_tar(tmp_path / "a.tar.gz", dicom_bytes, "w:gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"a\.tar\.gz"):
        list(TarSource(archive))


def test_not_an_archive(tmp_path: Path) -> None:
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"not a zip at all")
    with pytest.raises(SourceError, match="not a zip file"):
        ZipSource(fake)
    with pytest.raises(SourceError, match="not a tar file"):
        TarSource(fake)
    with pytest.raises(SourceError, match="no such"):
        ZipSource(tmp_path / "missing.zip")


def test_missing_members_by_uri(tmp_path: Path, dicom_bytes: dict[str, bytes]) -> None:
    zipped = _make_zip(tmp_path / "a.zip", dicom_bytes)
    tarred = _make_tar(tmp_path / "a.tar", dicom_bytes, "w")
    for uri in (member_uri("zip", zipped, "nope.dcm"), member_uri("tar", tarred, "nope.dcm")):
        with pytest.raises(SourceError, match="no member"):
            open_uri(uri)
    for uri in (f"zip://{zipped}!/../evil.dcm", f"tar://{tarred}!/../evil.dcm"):
        with pytest.raises(SourceError, match="refusing"):
            open_uri(uri)
