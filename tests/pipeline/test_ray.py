"""``--engine ray``: the pydicom corpus on a local Ray (2 CPUs, started once for the
module) gives what the local engine gives; a driver killed with SIGKILL resumes; actors
killed with SIGKILL mid-run are restarted by Ray and nothing is lost; a decoder that
crashes on an item fails that item, and the run goes on; without Ray, the CLI says how
to install it."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from indexer.errors import MedsearchError
from indexer.imaging.guard import DecodeJob, DecoderWorker
from indexer.imaging.types import DecodeResult
from indexer.pipeline.ray_engine import RayOptions, import_ray
from indexer.pipeline.runner import BuildReport, run_build
from indexer.settings import ImagingSettings
from tests.conftest import has_module
from tests.pacs.orthanc import PASSWORD as PACS_PASSWORD
from tests.pacs.orthanc import USER as PACS_USER
from tests.pacs.orthanc import orthanc
from tests.pipeline.conftest import TEST_MODEL, corpus_dir, options

ROOT = Path(__file__).parents[2]
needs_ray = pytest.mark.skipif(not has_module("ray"), reason="needs the ray extra")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")
PACS_AUTH = {"MEDSEARCH_DICOMWEB_USERNAME": PACS_USER, "MEDSEARCH_DICOMWEB_PASSWORD": PACS_PASSWORD}
CRASH_MARK = "planted-crash"
CRASH_EXIT = 70


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray with 2 CPUs for the module; the tests' own classes reach its workers."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray = import_ray()  # with token authentication, as the engine does
    started = time.perf_counter()
    # the workers' own environment: the project, and the test PACS's credentials (a site
    # sets MEDSEARCH_DICOMWEB_* in the environment of every `ray start`)
    env = {"PYTHONPATH": str(ROOT), **PACS_AUTH}
    context = ray.init(
        address="local",  # not a cluster that `ray start` runs on this host
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        runtime_env={"env_vars": env},
    )
    print(f"\nlocal Ray started in {time.perf_counter() - started:.1f} s")
    yield str(context.address_info["gcs_address"])
    ray.shutdown()


def _ray(**kw: Any) -> RayOptions:
    return RayOptions(decode_cpus=1, **kw)  # + 1 encoder: the module's 2 CPUs


def _active(index_dir: Path) -> dict[str, tuple[str, np.ndarray]]:
    with sqlite3.connect(index_dir / "catalog.sqlite3") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = conn.execute(
            "SELECT identity, source_uri, embedding FROM items WHERE status = 'active'"
        ).fetchall()
    found = {r[0]: (r[1], np.frombuffer(r[2], dtype="<f4")) for r in rows}
    assert len(found) == len(rows)  # no identity twice
    return found


def _failures(index_dir: Path) -> dict[str, str]:
    with sqlite3.connect(index_dir / "catalog.sqlite3") as conn:
        return dict(conn.execute("SELECT source_uri, reason FROM failures").fetchall())


@needs_ray
@pytest.mark.slow
def test_the_corpus_on_ray_is_the_local_build(
    ray_address: str, built_index: tuple[Path, BuildReport], tmp_path: Path
) -> None:
    from ray.data import DataContext

    local_dir, local = built_index
    index_dir = tmp_path / "ray"
    block_size = DataContext.get_current().target_max_block_size
    started = time.perf_counter()
    report = run_build(options([str(corpus_dir())], index_dir, engine="ray", ray=_ray()))
    # the engine's Ray Data settings were the run's: the process's are as they were
    assert DataContext.get_current().target_max_block_size == block_size
    got, want = report.to_dict(), local.to_dict()
    print(f"\nray build: {time.perf_counter() - started:.1f} s, {got['indexed']} images")
    for key in ("indexed", "duplicates", "failed"):
        assert got[key] == want[key], key
    assert got["stages"]["engine"] == "ray" and got["stages"]["ray"]["shared_paths"]
    assert got["index"]["count"] == want["index"]["count"]
    ray_rows, local_rows = _active(index_dir), _active(local_dir)
    assert ray_rows.keys() == local_rows.keys()
    for identity, (uri, vector) in ray_rows.items():
        assert uri == local_rows[identity][0]  # the same file wins among duplicates
        assert float(np.dot(vector, local_rows[identity][1])) >= 0.9999, identity
    assert _failures(index_dir) == _failures(local_dir)


def _archives(tmp: Path) -> tuple[Path, Path, Path]:
    """A zip and a tar of pydicom files (a non-image and a duplicate among them), and a
    folder."""

    def files(*names: str) -> list[Path]:
        found = [Path(p) for p in map(get_testdata_file, names) if p is not None]
        assert len(found) == len(names)
        return found

    zipped, tarred, folder = tmp / "a.zip", tmp / "b.tar", tmp / "folder"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in files("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"):
            archive.write(path, f"zip/{path.name}")
    with tarfile.open(tarred, "w") as archive:
        for path in files("emri_small.dcm", "rtplan.dcm", "MR_small_RLE.dcm"):
            archive.add(path, f"tar/{path.name}")
    folder.mkdir()
    for path in files("liver_1frame.dcm", "JPGExtended.dcm"):
        shutil.copy(path, folder / path.name)
    return zipped, tarred, folder


@needs_ray
@pytest.mark.slow
def test_shipped_files_archive_members_and_a_pacs_on_ray(
    ray_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the workers cannot read by path: files on the driver only (``--ship-files``)
    and archive members go as bytes; PACS instances (a real Orthanc) are fetched by the
    workers with their own credentials. The same rows as the local engine."""
    for key, value in PACS_AUTH.items():  # the driver's, for listing the PACS
        monkeypatch.setenv(key, value)
    zipped, tarred, folder = _archives(tmp_path)
    with orthanc(tmp_path / "orthanc") as pacs:
        stored = pacs.upload([Path(p) for p in map(get_testdata_file, ("SC_rgb.dcm",)) if p])
        assert len(stored) == 1
        sources = [str(zipped), str(tarred), str(folder), f"dicomweb+{pacs.dicomweb}"]
        local = run_build(options(sources, tmp_path / "local")).to_dict()
        ray = _ray(shared_paths=False)
        report = run_build(options(sources, tmp_path / "ray", engine="ray", ray=ray)).to_dict()
    assert report["stages"]["ray"]["shared_paths"] is False
    for key in ("indexed", "duplicates", "failed"):
        assert report[key] == local[key], key
    got, want = _active(tmp_path / "ray"), _active(tmp_path / "local")
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}
    kinds = {uri.split(":", 1)[0] for uri, _ in got.values()}
    assert kinds >= {"zip", "tar", "file", "dicomweb+http"}, kinds
    for identity, (_, vector) in got.items():
        assert float(np.dot(vector, want[identity][1])) >= 0.9999, identity
    assert _failures(tmp_path / "ray") == _failures(tmp_path / "local")


def _cli_build(index_dir: Path, address: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "indexer.cli", "index", "build", str(corpus_dir()),
            "--index", str(index_dir), "--model", str(TEST_MODEL), "--no-progress",
            "--batch-size", "4", "--engine", "ray", "--ray-address", address,
            "--decode-cpus", "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "MEDSEARCH_INTRA_OP_THREADS": "1"},
        start_new_session=True,
    )  # fmt: skip


def _committed(index_dir: Path) -> int:
    try:
        with sqlite3.connect(f"file:{index_dir / 'catalog.sqlite3'}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])
    except sqlite3.Error:
        return 0


@needs_ray
@pytest.mark.slow
def test_a_killed_driver_resumes_without_loss_or_duplicates(
    ray_address: str, built_index: tuple[Path, BuildReport], tmp_path: Path
) -> None:
    """The driver connects to the running cluster (the realistic case), is killed with
    SIGKILL once it has committed a batch, and is run again."""
    expected = _active(built_index[0])
    index_dir = tmp_path / "killed"
    proc = _cli_build(index_dir, ray_address)
    deadline = time.monotonic() + 240
    while _committed(index_dir) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""  # still running
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    at_kill = _committed(index_dir)
    assert 0 < at_kill < len(expected)
    rerun = _cli_build(index_dir, ray_address)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read() if rerun.stderr else ""
    got = _active(index_dir)
    assert got.keys() == expected.keys()
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in expected.items()}
    verify = subprocess.run(
        [sys.executable, "-m", "indexer.cli", "index", "verify", "--index", str(index_dir)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    print(f"\nkilled at {at_kill} of {len(expected)} items; resumed, verify ok")


def _kill_actor(stage: str) -> bool:
    """SIGKILL the process of ``stage``'s actor while it runs a task (Ray titles it
    ``ray::MapWorker(MapBatches(STAGE)).submit`` then)."""
    pattern = rf"MapWorker\(MapBatches\({stage}\)\)\.submit"
    return subprocess.run(["pkill", "-9", "-f", pattern], check=False).returncode == 0


def _wait(condition: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 240
    while not condition() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""


@needs_ray
@pytest.mark.slow
def test_actors_killed_mid_run_lose_nothing(
    ray_address: str, built_index: tuple[Path, BuildReport], tmp_path: Path
) -> None:
    """The decode actor's process killed with SIGKILL while it decodes, then the encoder
    actor's once a batch is committed (the kernel's OOM killer, an operator): Ray restarts
    each actor (the encoder loads and verifies the model again) and retries its task; the
    build ends with every item, none twice, no failure added."""
    expected = _active(built_index[0])
    index_dir = tmp_path / "actors-killed"
    proc = _cli_build(index_dir, ray_address)
    _wait(lambda: _kill_actor("DecodeStage"), proc)
    _wait(lambda: _committed(index_dir) > 0, proc)
    _wait(lambda: _kill_actor("EncodeStage"), proc)
    assert proc.wait(timeout=600) == 0, proc.stderr.read() if proc.stderr else ""
    got = _active(index_dir)
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in expected.items()}
    assert _failures(index_dir) == _failures(built_index[0])


@dataclass(frozen=True)
class _CrashingJob(DecodeJob):
    """A job whose arrival kills the decoder process, as a crashing codec would."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os._exit, (CRASH_EXIT,))


class PlantedCrashDecoder(DecoderWorker):
    """The guarded decoder, except that a file named ``*planted-crash*`` kills it."""

    def decode(self, job: DecodeJob) -> DecodeResult:
        if job.path is not None and CRASH_MARK in job.path:
            job = _CrashingJob(path=job.path, recipe=job.recipe)
        return super().decode(job)


@needs_ray
@pytest.mark.slow
def test_a_decoder_crash_fails_its_item_and_the_run_goes_on(
    ray_address: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name, target in (
        ("CT_small.dcm", "a.dcm"),
        ("MR_small.dcm", f"b-{CRASH_MARK}.dcm"),
        ("MR_small.dcm", "c.dcm"),
    ):
        path = get_testdata_file(name)
        assert path is not None
        shutil.copy(path, src / target)
    index_dir = tmp_path / "index"
    opts = options([str(src)], index_dir, engine="ray", ray=_ray(decoder=PlantedCrashDecoder))
    report = run_build(opts).to_dict()
    assert report["indexed"] == 2 and report["failed"] == {"decoder crashed": 1}
    with sqlite3.connect(index_dir / "catalog.sqlite3") as conn:
        failures = conn.execute("SELECT source_uri, reason, detail FROM failures").fetchall()
    assert len(failures) == 1
    uri, reason, detail = failures[0]
    assert uri.endswith(f"b-{CRASH_MARK}.dcm") and reason == "decoder crashed"
    assert detail.startswith(f"exit code {CRASH_EXIT}")


@needs_ray
@pytest.mark.slow
def test_reembed_on_ray(
    ray_address: str, built_index: tuple[Path, BuildReport], tmp_path: Path
) -> None:
    """Another index's items as the listing, on Ray (the same model: the same vectors)."""
    from indexer.pipeline.reembed import Reembed
    from indexer.pipeline.runner import open_catalog

    old_dir = built_index[0]
    old = open_catalog(old_dir, read_only=True)
    try:
        listing = Reembed(old)
        opts = options([str(old_dir)], tmp_path / "new", engine="ray", ray=_ray())
        opts.listing, opts.command = listing, "reembed"
        report = run_build(opts).to_dict()
    finally:
        old.close()
    want = _active(old_dir)
    got = _active(tmp_path / "new")
    assert report["indexed"] == len(want) == listing.sources and not report["failed"]
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}
    for identity, (_, vector) in got.items():
        assert float(np.dot(vector, want[identity][1])) >= 0.9999, identity


@needs_ray
@pytest.mark.slow
def test_workers_without_the_drivers_salt_are_refused(
    ray_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The patient-hash salt never travels through Ray: each node has its own, and a
    worker whose salt is not the driver's refuses to start (checked by a digest)."""
    monkeypatch.delenv("MEDSEARCH_PATIENT_HASH_SALT", raising=False)
    imaging = ImagingSettings(patient_hash_salt="a-salt-only-the-driver-has")
    opts = options([str(tmp_path)], tmp_path / "index", engine="ray", ray=_ray(), imaging=imaging)
    with pytest.raises(MedsearchError, match="MEDSEARCH_PATIENT_HASH_SALT is not the driver"):
        run_build(opts)


def test_without_ray_the_engine_says_how_to_install_it(tmp_path: Path) -> None:
    blocked = "import sys; sys.modules['ray'] = None; from indexer.cli.app import main; main()"
    run = subprocess.run(
        [
            sys.executable, "-c", blocked, "index", "build", str(tmp_path), "--index",
            str(tmp_path / "index"), "--model", str(TEST_MODEL), "--engine", "ray",
        ],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "pip install 'medsearch[ray]'" in run.stderr
    assert not (tmp_path / "index").exists()  # refused before anything was created
