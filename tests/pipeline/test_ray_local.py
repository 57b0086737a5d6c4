"""``--engine ray`` without ``--ray-address``, as a user first tries it: the CLI starts a Ray
of this host alone, sized for the run whatever the cores (the default ``--workers 2`` and
one encoder ask for 3 CPUs on this 2-core machine), builds, and stops that Ray.

Its own module: the Ray of ``test_ray.py`` (a cluster this build must not join) is gone
by the time it runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from tests.conftest import has_module
from tests.pipeline.conftest import TEST_MODEL

pytestmark = [
    pytest.mark.skipif(not has_module("ray"), reason="needs the ray extra"),
    pytest.mark.slow,
]
FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")  # two images, one refusal


def _ray_heads() -> set[int]:
    """PIDs of the Ray control processes (GCS servers) on this host."""
    found = subprocess.run(["pgrep", "-f", "gcs_server"], capture_output=True, text=True)
    return {int(pid) for pid in found.stdout.split()}


def test_a_ray_started_by_the_cli_runs_the_build_and_stops(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in FILES:
        path = get_testdata_file(name)
        assert path is not None
        shutil.copy(path, src / name)
    before = _ray_heads()
    report = tmp_path / "report.json"
    run = subprocess.run(
        [
            sys.executable, "-m", "indexer.cli", "index", "build", str(src), "--index",
            str(tmp_path / "index"), "--model", str(TEST_MODEL), "--engine", "ray",
            "--no-progress", "--report", str(report),
        ],
        capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "MEDSEARCH_INTRA_OP_THREADS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(report.read_text())
    assert got["indexed"] == 2 and sum(got["failed"].values()) == 1
    facts = got["stages"]["ray"]
    assert facts["address"] == "local" and facts["nodes"] == 1
    assert facts["cpus"] == 3 and facts["decode_cpus"] == 2  # --workers 2 + 1 encoder
    assert _ray_heads() == before  # the Ray it started is stopped
    index = str(tmp_path / "index")
    verify = subprocess.run(
        [sys.executable, "-m", "indexer.cli", "index", "verify", "--index", index],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
