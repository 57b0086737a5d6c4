"""A ``medsearch index watch`` process against a real Orthanc, and what its catalog holds
(shared by the watch tests and ``benchmarks/bench_watch.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from indexer.errors import CatalogError
from indexer.store import db
from indexer.store.catalog import Catalog, catalog_url
from indexer.store.models import ItemRow
from tests.pacs.orthanc import PASSWORD, USER, Orthanc

ROOT = Path(__file__).parents[2]
TEST_MODEL = ROOT / "tests" / "data" / "test_model"
ENV = {
    "MEDSEARCH_DICOMWEB_USERNAME": USER,
    "MEDSEARCH_DICOMWEB_PASSWORD": PASSWORD,
    "MEDSEARCH_DICOMWEB_BACKOFF_S": "0.2",
    "MEDSEARCH_DICOMWEB_RETRIES": "2",
    "MEDSEARCH_PROVIDER": "cpu",
    "MEDSEARCH_INTRA_OP_THREADS": "1",
}


class WatcherProcess:
    """``medsearch -v index watch`` in its own process group (SIGKILL takes its decoder
    workers with it, as a container's death would)."""

    def __init__(self, pacs: Orthanc, index: Path, log: Path, *, batch: int = 8) -> None:
        self.args = [
            sys.executable, "-m", "indexer.cli", "-v", "index", "watch",
            f"dicomweb+{pacs.dicomweb}", "--index", str(index), "--model", str(TEST_MODEL),
            "--interval", "0.3", "--batch", str(batch), "--reconcile", "0",
        ]  # fmt: skip
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def start(self) -> None:
        self._out = self.log.open("ab")
        self.process = subprocess.Popen(
            self.args, cwd=ROOT, env={**os.environ, **ENV}, stdout=self._out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the watcher and its workers."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._close()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM: the watcher finishes its batch and exits."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
            self._close()
        return code

    def _close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


@contextmanager
def watching(pacs: Orthanc, index: Path, log: Path, **kw: int) -> Iterator[WatcherProcess]:
    watcher = WatcherProcess(pacs, index, log, **kw)
    watcher.start()
    try:
        yield watcher
    finally:
        if watcher.alive():
            watcher.kill()


def active_sops(index: Path) -> list[str]:
    """The SOP Instance UIDs of the active items, one per row (duplicates would show)."""
    if not (index / "catalog.sqlite3").exists():
        return []
    try:
        catalog = Catalog.open(db.read_only_url(catalog_url(index)), upgrade=False)
    except (SQLAlchemyError, CatalogError):  # being created and migrated
        return []
    try:
        with catalog.session() as s:
            query = select(ItemRow.sop_instance_uid).where(ItemRow.status == "active")
            return [str(uid) for uid in s.scalars(query)]
    except SQLAlchemyError:  # not created yet
        return []
    finally:
        catalog.close()


def wait_for(check: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> float:
    """Seconds until ``check()`` holds; fails after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(step)
    return time.monotonic() - started


def delete_instance(pacs: Orthanc, sop_uid: str) -> None:
    with pacs.client() as http:
        found = http.post("/tools/lookup", content=sop_uid).json()
        assert http.delete(f"/instances/{found[0]['ID']}").status_code == 200
