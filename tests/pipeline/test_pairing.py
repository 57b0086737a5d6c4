"""An index is only ever read or updated with the catalog it was built from: the manifest
records the catalog's random id, and a missing, swapped or mis-configured catalog is a
clear error (never an empty catalog quietly created next to a full index)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from indexer.errors import CatalogError
from indexer.pipeline.runner import open_catalog
from indexer.store import db
from indexer.store.catalog import Catalog, catalog_url
from indexer.store.searcher import Searcher
from indexer.store.sync import index_store

pytestmark = pytest.mark.slow


def _index_stats(index_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "indexer.cli", "index", "stats", "--index", str(index_dir)],
        capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **env},
    )  # fmt: skip


def test_the_manifest_names_its_catalog(index_copy: Path) -> None:
    catalog = open_catalog(index_copy)
    try:
        manifest = index_store(index_copy).current()
        assert manifest is not None
        assert manifest.catalog_id == catalog.catalog_id()
        assert manifest.catalog_id is not None and len(manifest.catalog_id) == 32
    finally:
        catalog.close()


def test_a_missing_catalog_file_is_an_error_not_a_new_empty_catalog(index_copy: Path) -> None:
    for name in ("catalog.sqlite3", "catalog.sqlite3-wal", "catalog.sqlite3-shm"):
        (index_copy / name).unlink(missing_ok=True)
    with pytest.raises(CatalogError, match="holds an index but not its catalog"):
        open_catalog(index_copy)
    run = _index_stats(index_copy)
    assert run.returncode == 2 and "not its catalog" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert not (index_copy / "catalog.sqlite3").exists()


def test_another_catalog_is_refused(
    index_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sqlite3.connect(index_copy / "catalog.sqlite3") as conn:  # as if swapped
        conn.execute("UPDATE catalog_info SET catalog_id = ?", ("f" * 32,))
    with pytest.raises(CatalogError, match="built from catalog .* not from catalog ffffffffffff"):
        open_catalog(index_copy)
    catalog = Catalog.open(catalog_url(index_copy))
    try:
        with pytest.raises(CatalogError, match="check MEDSEARCH_CATALOG_URL"):
            Searcher(index_copy, catalog)  # the service's path
    finally:
        catalog.close()
    # a catalog URL that points elsewhere (here: an empty database)
    elsewhere = db.sqlite_url(tmp_path / "other.sqlite3")
    run = _index_stats(index_copy, MEDSEARCH_CATALOG_URL=elsewhere)  # read-only: not created
    assert run.returncode == 2 and "cannot open the catalog" in run.stderr, run.stderr
    assert not (tmp_path / "other.sqlite3").exists()
    monkeypatch.setenv("MEDSEARCH_CATALOG_URL", elsewhere)
    with pytest.raises(CatalogError, match="not from an empty catalog"):
        open_catalog(index_copy)  # a writer (build, add) creates it, then refuses the pair
