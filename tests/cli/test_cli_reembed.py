"""``medsearch index reembed``: an index of the old index's sources with a second model,
as a user runs it (a real subprocess), killed once and resumed; the old index is not
touched, during or after; a vanished source is reported."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cli.test_cli_embed import medsearch
from tests.conftest import copy_testdata

MODEL = Path(__file__).parents[1] / "data" / "test_model"
QUICK = {"MEDSEARCH_INTRA_OP_THREADS": "1"}
FILES = (
    "CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm",
    "MR_small_RLE.dcm", "liver_1frame.dcm", "JPGExtended.dcm", "rtplan.dcm",
)  # fmt: skip


@pytest.fixture()
def sources(tmp_path: Path) -> tuple[Path, Path]:
    src = copy_testdata(tmp_path / "src", FILES)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,finding\nCT_small.dcm,nodule\nMR_small.dcm,normal\n")
    return src, labels


def _build(src: Path, index: Path, model: Path, labels: Path) -> None:
    run = medsearch(
        "index", "build", str(src), "--index", str(index), "--model", str(model),
        "--no-progress", "--workers", "1", "--metadata", str(labels), "--key", "path",
        "--frames", "all", env=QUICK,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]


def _reembed_args(old: Path, new: Path, model: Path) -> list[str]:
    return [
        sys.executable, "-m", "indexer.cli", "index", "reembed", "--from", str(old),
        "--index", str(new), "--model", str(model), "--no-progress", "--workers", "1",
        "--batch-size", "1",
    ]  # fmt: skip


def _snapshot(index: Path) -> dict[str, str]:
    """Every file's hash. A reader of a SQLite catalog in WAL mode (this one, or the
    service) may leave the shared-memory index ``-shm`` and an *empty* ``-wal``; a write
    would leave pages in the ``-wal``."""
    wal = index / "catalog.sqlite3-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "the old catalog was written"
    return {
        str(p.relative_to(index)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(index.rglob("*"))
        if p.is_file() and not p.name.endswith(("-shm", "-wal"))
    }


def _rows(index: Path) -> dict[str, tuple[str, str | None, np.ndarray]]:
    with sqlite3.connect(f"file:{index / 'catalog.sqlite3'}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT identity, source_uri, labels, embedding FROM items WHERE status = 'active'"
        ).fetchall()
    return {r[0]: (r[1], r[2], np.frombuffer(r[3], dtype="<f4")) for r in rows}


def _committed(index: Path) -> int:
    try:
        with sqlite3.connect(f"file:{index / 'catalog.sqlite3'}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_reembed_is_a_fresh_build_and_the_old_index_stays_as_it_was(
    second_model: Path, sources: tuple[Path, Path], tmp_path: Path
) -> None:
    src, labels = sources
    old, new, fresh = tmp_path / "old", tmp_path / "new", tmp_path / "fresh"
    _build(src, old, MODEL, labels)
    before = _snapshot(old)

    # killed once it has committed an item, then run again to the end
    proc = subprocess.Popen(
        _reembed_args(old, new, second_model), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env={**os.environ, **QUICK}, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while _committed(new) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = _committed(new)
    assert _snapshot(old) == before  # during
    run = subprocess.run(
        _reembed_args(old, new, second_model), capture_output=True, text=True, check=False,
        env={**os.environ, **QUICK}, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert _snapshot(old) == before  # after

    _build(src, fresh, second_model, labels)
    got, want, was = _rows(new), _rows(fresh), _rows(old)
    assert got.keys() == want.keys() == was.keys()  # same identities (frames included)
    for identity, (uri, labels_json, vector) in got.items():
        assert (uri, labels_json) == want[identity][:2] == was[identity][:2]
        assert float(np.dot(vector, want[identity][2])) >= 0.9999, identity
        assert float(np.dot(vector, was[identity][2])) < 0.99  # the new model's vector
    assert any(json.loads(r[1] or "null") == {"finding": "nodule"} for r in got.values())
    verify = medsearch("index", "verify", "--index", str(new))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    print(f"\nreembed killed after {killed_at} of {len(got)} items, resumed; old untouched")


@pytest.mark.slow
def test_a_vanished_source_is_reported_not_dropped(
    second_model: Path, sources: tuple[Path, Path], tmp_path: Path
) -> None:
    src, labels = sources
    old, new = tmp_path / "old", tmp_path / "new"
    _build(src, old, MODEL, labels)
    (src / "MR_small.dcm").unlink()
    run = subprocess.run(
        _reembed_args(old, new, second_model), capture_output=True, text=True, check=False,
        env={**os.environ, **QUICK}, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "1 of 6 sources have vanished" in run.stdout
    with sqlite3.connect(new / "catalog.sqlite3") as conn:
        failures = conn.execute("SELECT source_uri, reason, detail FROM failures").fetchall()
    assert [(Path(u).name, r, d) for u, r, d in failures] == [
        ("MR_small.dcm", "cannot read source", "source vanished")
    ]
    assert len(_rows(new)) == len(_rows(old)) - 1


def test_reembed_into_its_own_directory_is_refused(tmp_path: Path) -> None:
    run = medsearch(
        "index", "reembed", "--from", str(tmp_path), "--index", str(tmp_path),
        "--model", str(MODEL),
    )  # fmt: skip
    assert run.returncode == 2 and "new directory" in run.stderr


def _pg_rows(url: str) -> dict[str, tuple[str, str | None, np.ndarray]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT identity, source_uri, labels, embedding FROM items "
                     "WHERE status = 'active'")
            ).fetchall()  # fmt: skip
    finally:
        engine.dispose()
    # labels: a JSON column, read back as objects here; as JSON text, as SQLite has it
    return {r[0]: (r[1], json.dumps(r[2]), np.frombuffer(r[3], "<f4")) for r in rows}


def _new_database(url: str, name: str) -> str:
    """A second database on the server of ``url`` (its user may create databases)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    finally:
        engine.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.mark.slow
def test_reembed_between_two_postgresql_databases(
    second_model: Path, sources: tuple[Path, Path], tmp_path: Path
) -> None:
    """A site whose catalogs are on PostgreSQL: the old index's catalog is named by
    MEDSEARCH_FROM_CATALOG_URL, the new one's by MEDSEARCH_CATALOG_URL, as for every
    command; one database named twice (spelt differently) is refused."""
    pytest.importorskip("psycopg")
    from tests.store.postgres import PASSWORD, postgres

    src, labels = sources
    old, new, fresh = tmp_path / "old", tmp_path / "new", tmp_path / "fresh"
    with postgres() as old_url:
        new_url = _new_database(old_url, "medsearch_new")
        run = medsearch(
            "index", "build", str(src), "--index", str(old), "--model", str(MODEL),
            "--no-progress", "--workers", "1", "--metadata", str(labels), "--key", "path",
            "--frames", "all", env={**QUICK, "MEDSEARCH_CATALOG_URL": old_url},
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        was, files_before = _pg_rows(old_url), _snapshot(old)

        # the old catalog is on the server, and nothing says so: told what to set
        unset = subprocess.run(
            _reembed_args(old, new, second_model), capture_output=True, text=True,
            check=False, env={**os.environ, **QUICK, "MEDSEARCH_CATALOG_URL": new_url},
            timeout=300,
        )  # fmt: skip
        assert unset.returncode != 0 and "MEDSEARCH_FROM_CATALOG_URL" in unset.stderr
        assert "Traceback" not in unset.stderr
        # the old database under another spelling (localhost for 127.0.0.1): refused
        alias = old_url.replace("@127.0.0.1:", "@localhost:")
        same = subprocess.run(
            _reembed_args(old, new, second_model), capture_output=True, text=True,
            check=False, timeout=300, env={
                **os.environ, **QUICK, "MEDSEARCH_FROM_CATALOG_URL": old_url,
                "MEDSEARCH_CATALOG_URL": alias,
            },
        )  # fmt: skip
        assert same.returncode != 0 and "same catalog id" in same.stderr, same.stderr[-2000:]
        assert "Traceback" not in same.stderr
        assert _pg_rows(old_url).keys() == was.keys()

        env = {**QUICK, "MEDSEARCH_FROM_CATALOG_URL": old_url, "MEDSEARCH_CATALOG_URL": new_url}
        run = subprocess.run(
            _reembed_args(old, new, second_model), capture_output=True, text=True,
            check=False, env={**os.environ, **env}, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        assert PASSWORD not in run.stdout + run.stderr + unset.stderr + same.stderr
        assert not (new / "catalog.sqlite3").exists()  # the new catalog is the server's
        verify = medsearch("index", "verify", "--index", str(new), env=env)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        got = _pg_rows(new_url)
        after = _pg_rows(old_url)
        assert _snapshot(old) == files_before

    _build(src, fresh, second_model, labels)
    want = _rows(fresh)
    assert got.keys() == want.keys() == was.keys()
    for identity, (uri, labels_json, vector) in got.items():
        assert (uri, labels_json) == want[identity][:2] == was[identity][:2]
        assert float(np.dot(vector, want[identity][2])) >= 0.9999, identity
        assert float(np.dot(vector, was[identity][2])) < 0.99
    for identity, (uri, labels_json, vector) in was.items():  # the old rows, untouched
        assert after[identity][:2] == (uri, labels_json)
        assert np.array_equal(after[identity][2], vector)
