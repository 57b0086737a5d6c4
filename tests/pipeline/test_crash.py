"""Crash loop: a real build killed with SIGKILL at random points, many rounds.

After every kill the SQLite file passes ``PRAGMA integrity_check``; the run after the
last kill completes; ``index verify`` passes; the catalog holds exactly the items of a
clean build (none lost, none duplicated).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.pipeline.conftest import TEST_MODEL, corpus_dir

pytestmark = pytest.mark.slow
ROUNDS = 12


def _sources() -> list[str]:
    sources = [str(corpus_dir())]
    try:
        import data_store  # pydicom-data: larger files, a longer build to interrupt

        sources.append(str(Path(data_store.__file__).parent / "data"))
    except ImportError:
        pass
    return sources


def _build(index_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "indexer.cli", "index", "build", *_sources(),
            "--index", str(index_dir), "--model", str(TEST_MODEL), "--no-progress",
            "--batch-size", "4", "--workers", "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # kill the decoder workers with it
    )  # fmt: skip


def _identities(index_dir: Path) -> list[str]:
    with sqlite3.connect(index_dir / "catalog.sqlite3") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = conn.execute("SELECT identity FROM items WHERE status = 'active'").fetchall()
    return sorted(r[0] for r in rows)


def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    proc = _build(clean)
    assert proc.wait(timeout=600) == 0, proc.stderr.read() if proc.stderr else ""
    expected = _identities(clean)
    assert len(expected) > 60

    crashed = tmp_path / "crashed"
    rng = np.random.default_rng(7)
    kills = 0
    for _ in range(ROUNDS):
        proc = _build(crashed)
        time.sleep(float(rng.uniform(1.0, 3.5)))  # start-up takes ~2 s
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if (crashed / "catalog.sqlite3").exists():
            got = _identities(crashed)  # integrity_check ok after every kill
            assert len(got) == len(set(got))
    proc = _build(crashed)
    assert proc.wait(timeout=600) == 0, proc.stderr.read() if proc.stderr else ""
    assert _identities(crashed) == expected
    run = subprocess.run(
        [sys.executable, "-m", "indexer.cli", "index", "verify", "--index", str(crashed)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    print(f"\ncrash loop: {ROUNDS} rounds, {kills} SIGKILLs, {len(expected)} items, verify ok")
    assert kills >= ROUNDS // 2
