"""``medsearch`` misused and attacked, as a subprocess (the findings of an audit that did):
every refusal a one-line ``error:`` with no traceback and no stored value, before any work.

- two writers on one index: the second is refused naming the first (two builds at once
  recorded 80 items twice, as duplicates of themselves); a killed writer frees the index;
- a catalog failure mid-run prints no statement parameters (they held allow-listed PHI);
- a damaged catalog, a file given as ``--index``, an output path that cannot be written:
  refused before the build runs;
- ``model export`` without the export extra says what to install;
- ``index verify`` passes an index holding more identical images than its probe looks at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlalchemy.exc import IntegrityError

from indexer.store import db
from tests.cli.test_cli_embed import medsearch

MODEL = str(Path(__file__).parents[1] / "data" / "test_model")
QUICK = {"MEDSEARCH_INTRA_OP_THREADS": "1"}


def _copies(folder: Path, n: int, name: str = "CT_small.dcm") -> Path:
    """``n`` copies of one pydicom file, each its own instance (new SOP Instance UID)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = get_testdata_file(name)
    assert path is not None
    for i in range(n):
        ds = dcmread(path)
        ds.SOPInstanceUID = generate_uid()
        ds.save_as(folder / f"copy{i:02d}.dcm")
    return folder


def _build(src: Path, index: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return medsearch(
        "index", "build", str(src), "--index", str(index), "--model", MODEL,
        "--no-progress", "--workers", "1", *extra, env=QUICK,
    )  # fmt: skip


def _refused(run: subprocess.CompletedProcess[str], *words: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", run.stderr).split())  # unwrap typer's box
    for word in words:
        assert word in text, run.stderr[-2000:]


HOLD = """
import sys, time
from pathlib import Path
from indexer.pipeline.runner import open_catalog
catalog = open_catalog(Path(sys.argv[1]))  # what every writing command does first
print("holding", flush=True)
time.sleep(600)
"""


def test_a_second_writer_is_refused_until_the_first_is_gone(tmp_path: Path) -> None:
    src, index = _copies(tmp_path / "src", 2), tmp_path / "index"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(index)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        run = _build(src, index)
        _refused(run, f"is being written by process {holder.pid}")
        for command in (["remove", "--source-prefix", "file:///x/"], ["rebuild"]):
            _refused(medsearch("index", *command, "--index", str(index)), "being written")
        stats = medsearch("index", "stats", "--index", str(index), "--json")  # readers may
        assert stats.returncode == 0, stats.stderr[-2000:]
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel lets the lock go with the process
        holder.wait()
    run = _build(src, index)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "indexed 2" in run.stdout


def test_two_builds_at_once_leave_the_state_of_one(tmp_path: Path) -> None:
    """The audit's case: a second build started half a second after the first."""
    src = _copies(tmp_path / "src", 6)
    shutil.copy(str(get_testdata_file("MR_small.dcm")), src / "mr.dcm")
    alone, index = tmp_path / "alone", tmp_path / "index"
    assert _build(src, alone).returncode == 0
    cmd = [sys.executable, "-m", "indexer.cli", "index", "build", str(src), "--index"]
    cmd += [str(index), "--model", MODEL, "--no-progress", "--workers", "1"]
    env = {**os.environ, **QUICK}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert second.returncode in (0, 2), second.stderr[-2000:]  # refused, or after the first
    assert "Traceback" not in second.stderr
    if second.returncode == 2:
        assert "being written by process" in second.stderr
    stats = [
        json.loads(medsearch("index", "stats", "--index", str(i), "--json").stdout)
        for i in (alone, index)
    ]
    assert stats[1]["items"] == stats[0]["items"] and stats[1]["failures"] == stats[0]["failures"]
    verify = medsearch("index", "verify", "--index", str(index))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_verify_passes_with_more_identical_images_than_a_probe_returns(tmp_path: Path) -> None:
    """Blank slices and copies under new UIDs tie: a probe of 5 missed itself among 8."""
    index = tmp_path / "index"
    assert _build(_copies(tmp_path / "src", 12), index).returncode == 0
    run = medsearch("index", "verify", "--index", str(index))
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout)["probe_misses"] == 0


def test_a_failed_statement_shows_no_values(tmp_path: Path) -> None:
    """Every catalog engine hides statement parameters: a failed INSERT used to print the
    row's values (allow-listed PHI, source paths) in its message and traceback."""
    engine = db.make_engine(db.sqlite_url(tmp_path / "c.sqlite3"))
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("v", String))
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(table).values(id=1, v="Doe^Jane"))
    with pytest.raises(IntegrityError) as caught, engine.begin() as conn:
        conn.execute(insert(table).values(id=1, v="Doe^Jane 19700101"))
    assert "Doe" not in str(caught.value) and "19700101" not in str(caught.value)
    assert db.first_line(caught.value) == "UNIQUE constraint failed: t.id"


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_a_damaged_catalog_is_refused_clearly(tmp_path: Path, damage: str) -> None:
    src, index = _copies(tmp_path / "src", 2), tmp_path / "index"
    assert _build(src, index).returncode == 0
    catalog = index / "catalog.sqlite3"
    if damage == "text":
        catalog.write_text("not a database\n" * 100)
    else:
        data = catalog.read_bytes()
        catalog.write_bytes(data[: len(data) // 3])
    for wal in index.glob("catalog.sqlite3-*"):
        wal.unlink()
    for command in (["stats"], ["verify"]):
        run = medsearch("index", *command, "--index", str(index))
        _refused(run, "damaged or not a catalog")
    _refused(_build(src, index), "damaged or not a catalog")


def test_unusable_paths_are_refused_before_the_build(tmp_path: Path) -> None:
    src = _copies(tmp_path / "src", 1)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _refused(_build(src, a_file), "is a file, not an index directory")
    index = tmp_path / "index"
    _refused(_build(tmp_path / "no-such-folder", index), "no such file or directory")
    assert not index.exists()  # the catalog is not made for a mistyped source
    _refused(_build(src, index, "--report", str(tmp_path / "no" / "r.json")), "no such directory")
    _refused(_build(src, index, "--report", str(tmp_path)), "is a directory")
    assert not (index / "catalog.sqlite3").exists()  # refused before anything was written
    ct = str(get_testdata_file("CT_small.dcm"))
    _refused(medsearch("preview", ct, "-o", str(tmp_path / "no" / "x.png")), "no such directory")


def test_export_without_the_extra_says_what_to_install(tmp_path: Path) -> None:
    hide = "import sys; sys.modules['torch'] = None; from indexer.cli.app import main; main()"
    run = subprocess.run(
        [sys.executable, "-c", hide, "model", "export", str(tmp_path), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    _refused(run, "medsearch[export]", "torch")
    assert not (tmp_path / "out").exists()


def test_a_rebuild_says_which_files_were_removed_earlier(tmp_path: Path) -> None:
    """A removed file listed again is not indexed again, and the summary says why (it
    said "already indexed", while `index stats` counted it as removed)."""
    src, index = _copies(tmp_path / "src", 3), tmp_path / "index"
    assert _build(src, index).returncode == 0
    gone = (src / "copy01.dcm").resolve().as_uri()
    run = medsearch("index", "remove", "--index", str(index), "--source-prefix", gone)
    assert run.returncode == 0, run.stderr[-2000:]
    run = _build(src, index)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(
        "indexed 0, skipped 3 (already in catalog: 2, removed earlier: 1)"
    ), run.stdout


SALT_A, SALT_B = "salt-A-0123456789abcdef", "salt-B-0123456789abcdef"


def test_one_patient_hash_salt_per_index(tmp_path: Path) -> None:
    """A second salt gave one patient two keys (and `exclude_same_patient` missed them),
    silently; the catalog now records the salt's check value, never the salt."""
    src, index = _copies(tmp_path / "src", 2), tmp_path / "index"
    more = _copies(tmp_path / "more", 1, "MR_small.dcm")

    def build(source: Path, salt: str | None) -> subprocess.CompletedProcess[str]:
        env = {**QUICK, **({"MEDSEARCH_PATIENT_HASH_SALT": salt} if salt else {})}
        return medsearch(
            "index", "build", str(source), "--index", str(index), "--model", MODEL,
            "--no-progress", "--workers", "1", env=env,
        )  # fmt: skip

    assert build(src, SALT_A).returncode == 0
    for salt, why in ((SALT_B, "another MEDSEARCH_PATIENT_HASH_SALT"), (None, "not set now")):
        run = build(more, salt)
        _refused(run, why)
        assert SALT_A not in run.stderr + run.stdout and SALT_B not in run.stderr + run.stdout
    assert build(more, SALT_A).returncode == 0
    catalog = (index / "catalog.sqlite3").read_bytes()
    assert SALT_A.encode() not in catalog
    serve = [sys.executable, "-m", "service", "serve", "--index", str(index), "--model", MODEL]
    run = subprocess.run(
        serve, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "MEDSEARCH_PATIENT_HASH_SALT": SALT_B},
    )  # fmt: skip
    _refused(run, "another MEDSEARCH_PATIENT_HASH_SALT")


def test_an_index_inside_the_folder_it_indexes_leaves_its_own_files_alone(
    tmp_path: Path,
) -> None:
    """Its catalog, lock and FAISS versions were recorded as `unsupported format`."""
    src = _copies(tmp_path / "src", 2)
    index = src / "index"
    for _ in range(2):
        run = _build(src, index)
        assert run.returncode == 0, run.stderr[-2000:]
    assert "the index's own files:" in run.stdout, run.stdout
    stats = json.loads(medsearch("index", "stats", "--index", str(index), "--json").stdout)
    assert stats["items"] == {"active": 2} and stats["failures"] == {}, stats
