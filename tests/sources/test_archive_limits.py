"""Archive bombs and special members: refused, recorded, and read in bounded memory.

The memory tests run the source and the pipeline.s ``fetch`` (what the build runs for
each item, with the default 1 GiB file limit) in a fresh interpreter and compare its peak
RSS before and after: a member is refused unread or inflated a step at a time, so the
peak grows by about the largest member read, never by what the archive inflates to.
"""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from indexer.errors import ImageRefused, SourceError
from indexer.imaging.types import Reason
from indexer.sources import TarSource, ZipSource, open_uri
from indexer.sources.archives import CappedMemberReader, open_zip_member
from tests.sources.bombs import MIB, bz2_tar, forge_sizes, set_flag_bits, zeros_zip

CAP = 8 * MIB
_MEASURE = """
import json, resource, sys
from indexer.pipeline.items import ReadItem, fetch
from indexer.sources import TarSource, ZipSource

kind, path, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
source = (ZipSource if kind == "zip" else TarSource)(path, max_member_bytes=cap)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for item in source:
    job = fetch(ReadItem(item, None), 1 << 30)  # the default MEDSEARCH_MAX_FILE_BYTES
    data = getattr(job, "data", None)
    out[item.relpath] = [getattr(job, "reason", None), getattr(job, "detail", ""),
                         None if data is None else len(data)]
    del job, data
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"items": out, "growth_mib": (peak - before) / 1024}))
"""


def _measure(kind: str, path: Path, cap: int) -> tuple[dict[str, list[object]], float]:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, kind, str(path), str(cap)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    return out["items"], out["growth_mib"]


def test_zip_bomb_is_refused_in_bounded_memory(
    tmp_path: Path, dicom_bytes: dict[str, bytes]
) -> None:
    ct = dicom_bytes["CT_small.dcm"]
    bomb = zeros_zip(
        tmp_path / "bomb.zip",
        {"honest.dcm": 128 * MIB, "forged.dcm": 128 * MIB, "small.dcm": 2 * MIB},
        {"ct.dcm": ct},
    )
    forge_sizes(bomb, {"forged.dcm": 1000})  # the headers say 1000 bytes
    assert bomb.stat().st_size < 2 * MIB
    items, growth = _measure("zip", bomb, CAP)
    assert items == {
        "ct.dcm": [None, "", len(ct)],
        "honest.dcm": ["too large", f"{128 * MIB} bytes, over the {CAP}-byte member limit", None],
        "forged.dcm": ["corrupt", "damaged zip member (bad CRC-32)", None],
        "small.dcm": [None, "", 2 * MIB],
    }
    # 258 MiB inflate from this zip; without the cap and the bounded steps the honest
    # member alone was read whole and the forged one inflated 128 MiB in one call
    assert growth < 24, f"peak RSS grew by {growth:.0f} MiB"


def test_tar_bz2_bomb_streams_in_bounded_memory(
    tmp_path: Path, dicom_bytes: dict[str, bytes]
) -> None:
    ct = dicom_bytes["CT_small.dcm"]
    bomb = bz2_tar(tmp_path / "bomb.tar.bz2", ("big.dcm", 128 * MIB), {"ct.dcm": ct})
    assert bomb.stat().st_size < 64 * 1024
    items, growth = _measure("tar", bomb, CAP)
    assert items == {
        "big.dcm": ["too large", f"{128 * MIB} bytes, over the {CAP}-byte member limit", None],
        "ct.dcm": [None, "", len(ct)],
    }
    # tarfile's own "r|*" inflated each 10 KiB bzip2 read whole: here 128 MiB at once
    assert growth < 24, f"peak RSS grew by {growth:.0f} MiB"


class _Counting(io.BytesIO):
    """A member stream that counts the bytes taken from it."""

    taken = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.taken += len(data)
        return data


def test_capped_reader_inflates_at_most_cap_plus_one_byte() -> None:
    inner = _Counting(bytes(5000))
    with pytest.raises(ImageRefused) as refused:
        CappedMemberReader(inner, 1000).read()
    assert refused.value.reason == Reason.TOO_LARGE
    assert inner.taken == 1001

    inner = _Counting(bytes(5000))
    reader = CappedMemberReader(inner, 1000)
    assert len(reader.read(600)) == 600
    with pytest.raises(ImageRefused):
        reader.read(600)
    assert inner.taken == 1001

    reader = CappedMemberReader(io.BytesIO(b"x" * 1000), 1000)
    assert reader.seek(10) == reader.tell() == 10
    assert reader.read() == b"x" * 990


def test_capped_reader_calls_damaged_data_corrupt() -> None:
    class Damaged(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise zipfile.BadZipFile("Bad CRC-32 for file 'x'")

    with pytest.raises(ImageRefused) as refused:
        CappedMemberReader(Damaged(), 1000).read()
    assert (refused.value.reason, refused.value.detail) == (
        Reason.CORRUPT,
        "damaged zip member (bad CRC-32)",
    )


def _special(name: str, mode: int, data: bytes = b"x") -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix: the high 16 bits of external_attr are st_mode
    info.external_attr = mode << 16
    return info, data


def test_zip_special_members_are_refused(tmp_path: Path, dicom_bytes: dict[str, bytes]) -> None:
    ct = dicom_bytes["CT_small.dcm"]
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ct.dcm", ct)
        for info, data in (
            _special("link.dcm", stat.S_IFLNK | 0o777, b"/etc/passwd"),
            _special("fifo", stat.S_IFIFO | 0o644, b""),
            _special("tty", stat.S_IFCHR | 0o600, b""),
            _special("folder", stat.S_IFDIR | 0o755, b""),  # a directory: skipped
        ):
            zf.writestr(info, data)
        zf.writestr("secret.dcm", ct)
        zf.writestr("b.dcm", ct, compress_type=zipfile.ZIP_BZIP2)
        zf.writestr("x.dcm", ct, compress_type=zipfile.ZIP_LZMA)
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("ct.dcm", b"a later duplicate")
    set_flag_bits(archive, {"secret.dcm": 0x1})  # encrypted
    source = ZipSource(archive)
    items = list(source)
    refusals = {
        item.uri.rpartition("!/")[2]: (item.refusal.reason, item.refusal.detail)
        for item in items
        if item.refusal is not None
    }
    assert refusals == {
        "link.dcm": (Reason.UNSUPPORTED, "symlink member"),
        "fifo": (Reason.UNSUPPORTED, "fifo member"),
        "tty": (Reason.UNSUPPORTED, "device member"),
        "secret.dcm": (Reason.UNSUPPORTED, "encrypted member"),
        "b.dcm": (Reason.UNSUPPORTED, "zip compression method 12 (only stored or deflated)"),
        "x.dcm": (Reason.UNSUPPORTED, "zip compression method 14 (only stored or deflated)"),
        "ct.dcm#9": (Reason.UNSUPPORTED, "duplicate member name"),  # its position
    }
    (good,) = (item for item in items if item.refusal is None)
    with good.open() as stream:
        assert stream.read() == ct
    with pytest.raises(SourceError, match="refusing member 'link.dcm': symlink member"):
        open_uri(f"zip://{archive}!/link.dcm")
    source.close()


def test_zip_member_over_the_cap_is_refused_unread(
    tmp_path: Path, dicom_bytes: dict[str, bytes]
) -> None:
    ct = dicom_bytes["CT_small.dcm"]
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ct.dcm", ct)
    cap = len(ct) - 1
    (item,) = ZipSource(archive, max_member_bytes=cap)
    assert item.refusal is not None
    assert item.refusal.reason == Reason.TOO_LARGE
    assert item.size == len(ct)
    with pytest.raises(ImageRefused, match="too large"):
        item.open()
    with pytest.raises(SourceError, match="member limit"):
        open_zip_member(str(archive), "ct.dcm", max_member_bytes=cap)
    with open_zip_member(str(archive), "ct.dcm") as stream:
        assert stream.read() == ct


def test_tar_special_members_are_refused(tmp_path: Path, dicom_bytes: dict[str, bytes]) -> None:
    ct = dicom_bytes["CT_small.dcm"]
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("ct.dcm")
        info.size = len(ct)
        tar.addfile(info, io.BytesIO(ct))
        for name, kind in (
            ("link.dcm", tarfile.SYMTYPE),
            ("hard.dcm", tarfile.LNKTYPE),
            ("fifo", tarfile.FIFOTYPE),
            ("tty", tarfile.CHRTYPE),
            ("disk", tarfile.BLKTYPE),
            ("dir", tarfile.DIRTYPE),  # skipped
        ):
            special = tarfile.TarInfo(name)
            special.type = kind
            special.linkname = "ct.dcm" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            tar.addfile(special)
    refusals = {item.relpath: item.refusal.detail for item in TarSource(archive) if item.refusal}
    assert refusals == {
        "link.dcm": "symlink member",
        "hard.dcm": "hard link member",
        "fifo": "fifo member",
        "tty": "device member",
        "disk": "device member",
    }
