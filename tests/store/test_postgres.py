"""The catalog on a real PostgreSQL server (``MEDSEARCH_CATALOG_URL``): migrations,
a build of the pydicom corpus that matches the SQLite build, search, remove, verify,
the CLI and the service, and a password that never reaches a log line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from sqlalchemy import inspect, select

from indexer.encoders.encoder import Encoder
from indexer.imaging import decode_path
from indexer.pipeline.runner import BuildReport, open_catalog, run_build
from indexer.settings import ImagingSettings
from indexer.store import db
from indexer.store.index_params import EXACT_BELOW
from indexer.store.models import ItemRow
from indexer.store.searcher import Searcher
from indexer.store.verify import verify
from service.app import create_app
from tests.pipeline.conftest import corpus_dir, options
from tests.service.conftest import settings_for
from tests.service.live import serve
from tests.service.test_paging_compressed import (
    build_compressed,
    check_grouped_pages,
    check_rerank_store,
)
from tests.store.postgres import PASSWORD, postgres

pytestmark = pytest.mark.slow
pytest.importorskip("psycopg")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres() as url:
        yield url


def test_migrations_upgrade_check_downgrade_upgrade(pg_url: str) -> None:
    engine = db.make_engine(pg_url)
    try:
        db.upgrade(engine)
        assert engine.dialect.name == "postgresql"
        assert db.current_revision(engine) == db.head_revision()
        command.check(db.alembic_config(pg_url))  # no drift between models and revisions
        db.downgrade(engine, "base")
        assert "items" not in inspect(engine).get_table_names()
        db.upgrade(engine)
        assert {"items", "runs", "failures", "catalog_info"} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()


def _identities(catalog_url: str) -> set[str]:
    engine = db.make_engine(catalog_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(ItemRow.identity).where(ItemRow.status == "active"))
            return {row[0] for row in rows}
    finally:
        engine.dispose()


def test_build_on_postgres_matches_the_sqlite_build(
    pg_url: str,
    built_index: tuple[Path, BuildReport],
    encoder: Encoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("MEDSEARCH_CATALOG_URL", pg_url)
    index_dir = tmp_path / "index"
    caplog.set_level(logging.DEBUG)
    report = run_build(options([str(corpus_dir())], index_dir)).to_dict()
    assert PASSWORD not in caplog.text
    sqlite_dir, sqlite_report = built_index
    expected = sqlite_report.to_dict()
    assert report["indexed"] == expected["indexed"]
    assert report["duplicates"] == expected["duplicates"]
    assert report["failed"] == expected["failed"]
    assert not (index_dir / "catalog.sqlite3").exists()  # the catalog is the server's
    assert _identities(pg_url) == _identities(db.sqlite_url(sqlite_dir / "catalog.sqlite3"))

    catalog = open_catalog(index_dir)
    try:
        assert catalog.engine.dialect.name == "postgresql"
        assert verify(index_dir, catalog).ok
        path = get_testdata_file("MR_small.dcm")
        assert path is not None
        pixels = decode_path(path, ImagingSettings()).images[0].pixels
        searcher = Searcher(index_dir, catalog)
        hit = searcher.search(encoder.embed_images([pixels], searcher.binding.recipe)[0], 1)[0]
        assert hit.item.source_uri.endswith("/MR_small.dcm")
        assert hit.score == pytest.approx(1.0, abs=1e-4)
        assert catalog.remove(source_prefix=hit.item.source_uri) == 1
    finally:
        catalog.close()
    # a rerun skips what is indexed, and the removal is published; the CLI agrees
    again = run_build(options([str(corpus_dir())], index_dir)).to_dict()
    assert again["indexed"] == 0
    cli = subprocess.run(
        [sys.executable, "-m", "indexer.cli", "index", "verify", "--index", str(index_dir)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "MEDSEARCH_CATALOG_URL": pg_url},
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert PASSWORD not in cli.stdout + cli.stderr

    app = create_app(settings_for(index_dir, catalog_url=pg_url))
    with TestClient(app) as client:
        with open(path, "rb") as f:
            r = client.post("/v1/search/image", files={"file": ("MR_small.dcm", f)})
        assert r.status_code == 200, r.text
        first = r.json()["results"][0]
        assert not first["source_uri"].endswith("/MR_small.dcm")  # removed above
        item = client.get(f"/v1/items/{first['id']}")
        assert item.status_code == 200
        assert item.json()["source_uri"] == first["source_uri"]


def test_compressed_index_on_postgres_pages_and_holds_rerank_vectors(tmp_path: Path) -> None:
    """The default index (IVF-SQ8) over a PostgreSQL catalog, served: the re-rank vectors
    are read from the server into memory, grouped pages never repeat a series, scores
    stay exact. A server of its own: this catalog is not the corpus build's."""
    with postgres() as url:
        index_dir = tmp_path / "index"
        index_dir.mkdir()
        build_compressed(index_dir, url, n_items=EXACT_BELOW + 1000)
        with (
            serve(create_app(settings_for(index_dir, catalog_url=url))) as base,
            httpx.Client(base_url=base, timeout=60) as client,
        ):
            check_rerank_store(client, url)
            check_grouped_pages(client, collapse=False)
