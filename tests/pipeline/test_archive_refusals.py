"""Archive members that are not read end up as failures, through the real CLI (issue 17).

A tar's links, FIFOs and devices, unsafe and duplicate names, and a zip bomb's members
are each recorded in the catalog and the run report with a reason; the images beside
them are indexed, and the bomb never makes the build's memory grow with what it inflates.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from pydicom.data import get_testdata_file
from sqlalchemy import select

from indexer.pipeline.runner import run_build
from indexer.sources.uri import member_uri
from indexer.store.catalog import Catalog, catalog_url
from indexer.store.models import Failure
from tests.pipeline.conftest import TEST_MODEL, options
from tests.sources.bombs import MIB, forge_sizes, run_measured, zeros_zip

UNSUPPORTED = "unsupported format"


def _ct() -> bytes:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    return Path(path).read_bytes()


def _build(archive: Path, index: Path) -> list[str]:
    """The command line of ``medsearch index build`` for one archive."""
    cli = [sys.executable, "-m", "indexer.cli", "index", "build", str(archive)]
    return [*cli, "--index", str(index), "--model", str(TEST_MODEL), "--no-progress"]


def _medsearch(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "indexer.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _failures(index: Path) -> dict[str, tuple[str, str]]:
    catalog = Catalog.open(catalog_url(index))
    try:
        with catalog.session() as s:
            rows = s.execute(select(Failure.source_uri, Failure.reason, Failure.detail)).all()
    finally:
        catalog.close()
    return {uri: (reason, detail) for uri, reason, detail in rows}


def _report(index: Path) -> dict[str, object]:
    (path,) = (index / "reports").glob("run-*.json")
    report: dict[str, object] = json.loads(path.read_text())
    return report


def _add(tar: tarfile.TarFile, name: str, kind: bytes, data: bytes = b"") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "scans/ct.dcm"
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    tar.addfile(info, io.BytesIO(data) if data else None)


def test_special_tar_members_are_recorded_as_failures(tmp_path: Path) -> None:
    ct = _ct()
    archive = tmp_path / "study.tar"
    with tarfile.open(archive, "w") as tar:
        _add(tar, "scans", tarfile.DIRTYPE)  # position 1: skipped, not a file
        _add(tar, "scans/ct.dcm", tarfile.REGTYPE, ct)
        _add(tar, "link.dcm", tarfile.SYMTYPE)
        _add(tar, "hard.dcm", tarfile.LNKTYPE)
        _add(tar, "fifo", tarfile.FIFOTYPE)
        _add(tar, "tty", tarfile.CHRTYPE)
        _add(tar, "disk", tarfile.BLKTYPE)
        _add(tar, "../evil.dcm", tarfile.REGTYPE, ct)
        _add(tar, "/abs.dcm", tarfile.REGTYPE, ct)
        _add(tar, "scans/./ct.dcm", tarfile.REGTYPE, ct)  # position 10: a duplicate name
        _add(tar, ".DS_Store", tarfile.REGTYPE, b"junk")  # skipped, not an image
    index = tmp_path / "index"
    _medsearch(*_build(archive, index)[3:])

    def uri(name: str) -> str:
        return member_uri("tar", archive, name)

    assert _failures(index) == {
        uri("link.dcm"): (UNSUPPORTED, "symlink member"),
        uri("hard.dcm"): (UNSUPPORTED, "hard link member"),
        uri("fifo"): (UNSUPPORTED, "fifo member"),
        uri("tty"): (UNSUPPORTED, "device member"),
        uri("disk"): (UNSUPPORTED, "device member"),
        uri("../evil.dcm"): (UNSUPPORTED, "unsafe member name"),
        uri("/abs.dcm"): (UNSUPPORTED, "unsafe member name"),
        uri("scans/ct.dcm") + "#10": (UNSUPPORTED, "duplicate member name"),
    }
    report = _report(index)
    assert report["indexed"] == 1
    assert report["failed"] == {UNSUPPORTED: 8}

    # refusals are permanent, and each has its own URI: a rerun reads nothing again
    again = run_build(options([str(archive)], index))
    assert (again.indexed, dict(again.failed)) == (0, {})
    assert again.skipped == {"skipped: already in catalog": 9}


def test_zip_bomb_is_recorded_in_bounded_memory(tmp_path: Path) -> None:
    ct = _ct()
    control = zeros_zip(tmp_path / "control.zip", {}, {"ct.dcm": ct})
    bomb = zeros_zip(
        tmp_path / "bomb.zip",
        {"big.dcm": 264 * MIB, "forged.dcm": 64 * MIB},  # big: over the 256 MiB member cap
        {"ct.dcm": ct},
    )
    forge_sizes(bomb, {"forged.dcm": 1000})  # its headers say 1000 bytes
    assert bomb.stat().st_size < 2 * MIB

    _, control_kib = run_measured(_build(control, tmp_path / "control"))
    out, bomb_kib = run_measured(_build(bomb, tmp_path / "index"))
    assert "indexed 1" in out
    # before the member cap, big.dcm was read whole (and copied to a decoder process);
    # forged.dcm inflated whole in one call, then stopped the build with BadZipFile
    growth_mib = (bomb_kib - control_kib) / 1024
    assert growth_mib < 48, f"the bomb's build peaked {growth_mib:.0f} MiB above the control"

    stats = json.loads(_medsearch("index", "stats", "--index", str(tmp_path / "index"), "--json"))
    assert stats["items"] == {"active": 1}
    assert stats["failures"] == {"too large": 1, "corrupt": 1}
    assert _failures(tmp_path / "index") == {
        member_uri("zip", bomb, "big.dcm"): (
            "too large",
            f"{264 * MIB} bytes, over the {256 * MIB}-byte member limit",
        ),
        member_uri("zip", bomb, "forged.dcm"): ("corrupt", "damaged zip member (bad CRC-32)"),
    }
