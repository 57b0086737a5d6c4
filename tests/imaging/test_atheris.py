"""The atheris target runs for a bounded number of inputs without a finding."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

pytestmark = pytest.mark.slow
TARGET = Path(__file__).parents[1] / "fuzz" / "fuzz_decoder.py"


def test_atheris_target(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    artifacts = tmp_path / "artifacts"  # crash files, never in the working tree
    artifacts.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
        path = get_testdata_file(name)
        assert path is not None
        (corpus / name).write_bytes(Path(path).read_bytes())
    run = subprocess.run(
        [sys.executable, str(TARGET), "-runs=400", "-max_total_time=60", "-seed=1",
         "-rss_limit_mb=4096", f"-artifact_prefix={artifacts}/", str(corpus)],
        capture_output=True, text=True, timeout=300, check=False,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert run.returncode == 0, (run.stderr[-3000:], sorted(artifacts.iterdir()))
    assert "Done" in run.stderr or "done" in run.stderr.lower()
