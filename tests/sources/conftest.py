"""Fixtures for the source tests: real DICOM files from pydicom's test data, in tmp_path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

SAMPLES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")


@pytest.fixture(scope="session")
def pydicom_files() -> Path:
    """pydicom's bundled test-file folder (no download)."""
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    return Path(path).parent


@pytest.fixture()
def dicom_bytes(pydicom_files: Path) -> dict[str, bytes]:
    """The bytes of a few real DICOM files, by name."""
    return {name: (pydicom_files / name).read_bytes() for name in SAMPLES}


@pytest.fixture()
def image_tree(tmp_path: Path, pydicom_files: Path) -> Path:
    """``tree/`` with real DICOM files at three depths plus junk that must be skipped."""
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    shutil.copy(pydicom_files / "CT_small.dcm", root / "top.dcm")
    shutil.copy(pydicom_files / "MR_small.dcm", root / "a" / "mr.dcm")
    shutil.copy(pydicom_files / "rtplan.dcm", root / "a" / "b" / "plan")
    (root / ".DS_Store").write_bytes(b"junk")
    (root / "a" / "._mr.dcm").write_bytes(b"apple double")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "top.dcm").write_bytes(b"junk")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.dcm").write_bytes(b"junk")
    (root / "labels.csv").write_text("path,label\n")
    return root


TREE_FILES = {"top.dcm": "CT_small.dcm", "a/mr.dcm": "MR_small.dcm", "a/b/plan": "rtplan.dcm"}
