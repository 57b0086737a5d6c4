"""``--engine ray`` without ``--ray-address``, as a user first tries it: the CLI starts a Ray
of this host alone, sized for the run whatever the cores (the default ``--workers 2`` and
one encoder ask for 3 CPUs on this 2-core machine), builds, and stops that Ray. GPUs: a
cluster without the GPUs asked for is refused before anything starts, and an encoder
that would silently run on the CPU instead of CUDA refuses to start.

Its own module: the Ray of ``test_ray.py`` (a cluster these builds must not join) is gone
by the time it runs; each test here starts and stops its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import copy_testdata, has_module
from tests.pipeline.conftest import TEST_MODEL

pytestmark = [
    pytest.mark.skipif(not has_module("ray"), reason="needs the ray extra"),
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
]
FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")  # two images, one refusal


def _ray_heads() -> set[int]:
    """PIDs of the Ray control processes (GCS servers) on this host."""
    found = subprocess.run(["pgrep", "-f", "gcs_server"], capture_output=True, text=True)
    return {int(pid) for pid in found.stdout.split()}


def test_a_ray_started_by_the_cli_runs_the_build_and_stops(tmp_path: Path) -> None:
    src = copy_testdata(tmp_path / "src", FILES)
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


@pytest.fixture()
def ray_tmp() -> Iterator[Path]:
    """Ray's temporary directory for one build (short: Ray's socket paths must fit 107
    characters, which pytest's tmp_path does not)."""
    path = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _build_with_own_ray(src: Path, index: Path, model: Path, ray_tmp: Path) -> Any:
    return subprocess.run(
        [
            sys.executable, "-m", "indexer.cli", "-v", "index", "build", str(src), "--index",
            str(index), "--model", str(model), "--engine", "ray", "--no-progress",
            "--workers", "1",
        ],
        capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "MEDSEARCH_INTRA_OP_THREADS": "1", "RAY_TMPDIR": str(ray_tmp)},
    )  # fmt: skip


def test_a_ray_started_here_removes_its_logs_after_success_keeps_them_after_failure(
    tmp_path: Path, ray_tmp: Path
) -> None:
    """Ray never removes its session directories (0.2-1 MB of logs per start): a build
    run from cron every few minutes grew /tmp/ray by ~80 of them a day here."""
    src = copy_testdata(tmp_path / "src", FILES[:1])
    run = _build_with_own_ray(src, tmp_path / "index", TEST_MODEL, ray_tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    sessions = ray_tmp / "ray"  # RAY_TMPDIR/ray/session_*
    assert not list(sessions.glob("session_2*")), list(sessions.iterdir())
    latest = Path(os.readlink(sessions / "session_latest"))  # Ray's link: now dangling
    assert latest.name.startswith("session_2") and not latest.exists()

    model = tmp_path / "model"  # the encoder actor refuses it: a weight file was damaged
    shutil.copytree(TEST_MODEL, model)
    with (model / "image_encoder.onnx").open("r+b") as fp:
        fp.seek(-8, os.SEEK_END)
        fp.write(b"\0" * 8)
    run = _build_with_own_ray(src, tmp_path / "index2", model, ray_tmp)
    assert run.returncode != 0
    kept = list(sessions.glob("session_2*"))
    assert len(kept) == 1 and (kept[0] / "logs").is_dir()
    assert f"the Ray logs of this build are kept in {kept[0]}" in run.stderr


def test_gpus_the_cluster_lacks_are_refused_before_anything_starts(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable, "-m", "indexer.cli", "index", "build", str(tmp_path), "--index",
            str(tmp_path / "index"), "--model", str(TEST_MODEL), "--engine", "ray",
            "--gpus-per-encoder", "1", "--no-progress",
        ],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    assert "0 GPUs" in run.stderr and "Traceback" not in run.stderr


def test_an_encoder_that_would_fall_back_to_cpu_refuses(tmp_path: Path) -> None:
    """A cluster that declares a GPU (Ray's logical resource: the only stand-in here) and an
    ONNX Runtime without CUDA: the encoder actor refuses to start instead of running on
    the CPU, and the build stops with that reason."""
    from indexer.errors import MedsearchError
    from indexer.pipeline.ray_engine import RayOptions, import_ray
    from indexer.pipeline.runner import run_build
    from tests.pipeline.conftest import options

    ray = import_ray()
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        ray_options = RayOptions(decode_cpus=1, gpus_per_encoder=1)
        opts = options([str(tmp_path)], tmp_path / "index", engine="ray", ray=ray_options)
        with pytest.raises(MedsearchError, match="CUDA was asked for"):
            run_build(opts)
    finally:
        ray.shutdown()
