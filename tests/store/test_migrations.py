"""Alembic owns the schema: upgrade, no drift, downgrade to base, upgrade again."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic import command
from sqlalchemy import Engine, inspect

from indexer.store import db
from indexer.store.catalog import Catalog
from indexer.store.filters import Filters


def test_upgrade_check_downgrade_upgrade(tmp_path: Path) -> None:
    url = db.sqlite_url(tmp_path / "c.sqlite3")
    engine = db.make_engine(url)
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    assert {"items", "runs", "failures", "catalog_info"} <= set(inspect(engine).get_table_names())
    command.check(db.alembic_config(url))  # raises if the models and the revisions drift
    db.downgrade(engine, "base")
    assert db.current_revision(engine) is None
    assert "items" not in inspect(engine).get_table_names()
    db.upgrade(engine)
    assert "items" in inspect(engine).get_table_names()
    engine.dispose()


def test_sqlite_is_wal_with_foreign_keys(tmp_path: Path) -> None:
    catalog = Catalog.open(db.sqlite_url(tmp_path / "c.sqlite3"))
    with catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    catalog.close()
    with sqlite3.connect(tmp_path / "c.sqlite3") as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_db_upgrade_command(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "indexer.cli", "db", "upgrade", "--index", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "empty -> " in run.stdout
    assert (tmp_path / "catalog.sqlite3").exists()


def _catalog_at(tmp_path: Path, revision: str) -> tuple[str, Engine]:
    """A SQLite catalog upgraded to ``revision`` only: its URL and engine."""
    url = db.sqlite_url(tmp_path / "c.sqlite3")
    engine = db.make_engine(url)
    db.upgrade(engine, revision)
    return url, engine


def test_revision_0002_gives_an_existing_catalog_its_id(tmp_path: Path) -> None:
    url, engine = _catalog_at(tmp_path, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO catalog_info (model_fingerprint, embedding_dim, recipe, "
            "render_policy, created_at) VALUES ('f', 8, 'reference', 'viewer-v1', "
            "'2026-01-01 00:00:00')"
        )
    db.upgrade(engine)
    engine.dispose()
    catalog = Catalog.open(url)
    try:
        first = catalog.catalog_id()
        assert first is not None and len(first) == 32 and int(first, 16) >= 0
    finally:
        catalog.close()


def test_revision_0006_unescapes_label_keys_so_they_filter(tmp_path: Path) -> None:
    """A catalog written before 0006 holds ``{"K\\u00f6rperteil": ...}``: after the upgrade
    the label filter finds its items (SQLite matches JSON keys as stored)."""
    url, engine = _catalog_at(tmp_path, "0005")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO runs (id, command, sources, user, host, started_at, status, counts) "
            "VALUES (1, 'build', '[]', '', '', '2026-01-01 00:00:00', 'done', '{}')"
        )
        for n, labels in enumerate(
            ['{"K\\u00f6rperteil": "Sch\\u00e4del"}', '{"organ": "chest"}', None], 1
        ):
            conn.exec_driver_sql(
                "INSERT INTO items (id, identity, source_uri, sha256, size, format, width, "
                "height, labels, embedding, model_fingerprint, recipe, render_policy, "
                "status, run_id, created_at, updated_at) VALUES (?, ?, ?, 's', 1, 'png', 1, "
                "1, ?, x'00', 'f', 'reference', 'viewer-v1', 'active', 1, "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00')",
                (n, f"i{n}", f"file:///{n}.png", labels),
            )
    db.upgrade(engine)
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT labels FROM items ORDER BY id").scalars().all()
    engine.dispose()
    assert stored == ['{"Körperteil": "Schädel"}', '{"organ": "chest"}', None]
    catalog = Catalog.open(url)
    try:
        assert list(catalog.filter_ids(Filters(labels={"Körperteil": "Schädel"}))) == [1]
    finally:
        catalog.close()
