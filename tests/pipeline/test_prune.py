"""``index build --prune`` as a subprocess: files and archive members that are gone leave
the index; an emptied or missing root removes nothing unless forced."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from indexer.store.catalog import Catalog, catalog_url
from tests.pipeline.conftest import TEST_MODEL

pytestmark = pytest.mark.slow
NAMES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "US1_J2KR.dcm", "SC_rgb.dcm"]
MEMBERS = [
    "rtdose.dcm", "emri_small.dcm", "693_UNCR.dcm", "MR2_J2KI.dcm", "OBXXXX1A.dcm",
    "SC_rgb_small_odd.dcm",
]  # fmt: skip


def _file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None
    return Path(path)


def _build(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "indexer.cli", "index", "build", *args, "--model",
        str(TEST_MODEL), "--no-progress", "--workers", "1",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=check)


def _active(index: Path) -> set[str]:
    catalog = Catalog.open(catalog_url(index))
    try:
        with catalog.session() as s:
            from sqlalchemy import select

            from indexer.store.models import ItemRow

            rows = s.scalars(select(ItemRow.source_uri).where(ItemRow.status == "active"))
            return {uri.rsplit("/", 1)[-1] for uri in rows}
    finally:
        catalog.close()


def test_prune_files_and_members_that_are_gone(tmp_path: Path) -> None:
    folder, archive, index = tmp_path / "folder", tmp_path / "a.zip", tmp_path / "index"
    folder.mkdir()
    for name in NAMES:
        shutil.copy(_file(name), folder / name)
    with zipfile.ZipFile(archive, "w") as zf:
        for name in MEMBERS:
            zf.write(_file(name), name)
    _build(str(folder), str(archive), "--index", str(index))
    before = _active(index)
    assert {"CT_small.dcm", "rtdose.dcm"} <= before

    (folder / "CT_small.dcm").unlink()
    with zipfile.ZipFile(archive, "w") as zf:  # the archive without rtdose.dcm
        for name in MEMBERS[1:]:
            zf.write(_file(name), name)
    _build(str(folder), str(archive), "--index", str(index))  # no --prune: kept
    assert _active(index) == before
    report = tmp_path / "report.json"
    out = _build(
        str(folder), str(archive), "--index", str(index), "--prune", "--report", str(report)
    )
    assert "pruned 2 whose files are gone" in out.stdout
    assert json.loads(report.read_text())["pruned"] == 2
    assert _active(index) == before - {"CT_small.dcm", "rtdose.dcm"}
    verify = [sys.executable, "-m", "indexer.cli", "index", "verify", "--index", str(index)]
    facts = json.loads(subprocess.run(verify, capture_output=True, text=True, check=True).stdout)
    assert facts["ok"] and facts["index_count"] == len(before) - 2
    stats = [sys.executable, "-m", "indexer.cli", "index", "stats", "--index", str(index), "--json"]
    counted = json.loads(subprocess.run(stats, capture_output=True, text=True, check=True).stdout)
    assert counted["items"]["removed"] == 2


def test_an_emptied_or_missing_root_removes_nothing_unless_forced(tmp_path: Path) -> None:
    folder, index = tmp_path / "folder", tmp_path / "index"
    folder.mkdir()
    for name in NAMES:
        shutil.copy(_file(name), folder / name)
    _build(str(folder), "--index", str(index))
    before = _active(index)

    shutil.move(folder, tmp_path / "elsewhere")  # the disk is not mounted: no such root
    missing = _build(str(folder), "--index", str(index), "--prune", check=False)
    assert missing.returncode != 0 and "no such file or directory" in missing.stderr
    assert _active(index) == before

    folder.mkdir()  # an empty mount point
    empty = _build(str(folder), "--index", str(index), "--prune", check=False)
    assert empty.returncode != 0
    assert "is it mounted and complete? Nothing was removed" in empty.stderr
    assert _active(index) == before
    _build(str(folder), "--index", str(index), "--prune", "--force")
    assert _active(index) == set()
