"""Database engine and schema migrations for the catalog.

SQLite is opened in WAL mode (readers never block the writer, a crashed writer leaves the
last committed state) with foreign keys on, ``synchronous=FULL`` (a committed batch
survives a power cut, at one fsync per batch) and a 30 s busy timeout. Any other
SQLAlchemy URL (e.g. ``postgresql+psycopg://...``) works the same way.

The schema belongs to Alembic: :func:`upgrade` runs the revisions shipped in the
``migrations`` package (on opening a catalog, or ``medsearch db upgrade``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event

logger = logging.getLogger(__name__)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def read_only_url(url: str) -> str:
    """``url`` opened for reading only: SQLite's ``mode=ro`` (an existing file, nothing
    created); other databases are read through the same URL (read-only commands issue no
    write and never migrate)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url:
        return url
    return f"{prefix}file:{quote(url[len(prefix) :])}?mode=ro&uri=true"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _json(value: object) -> str:
    """JSON columns as text with non-ASCII characters kept: SQLite's ``json_extract`` matches
    a key as written, so a label column ``Körperteil`` stored as ``K\\u00f6rperteil``
    (``json.dumps``' default) could never be filtered on."""
    return json.dumps(value, ensure_ascii=False)


def make_engine(url: str) -> Engine:
    # hide_parameters: a failed statement's message would carry its values (stored PHI,
    # source paths) to whoever prints it
    engine = create_engine(url, future=True, json_serializer=_json, hide_parameters=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def alembic_config(url: str) -> Config:
    import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _run(engine: Engine, action: str, revision: str) -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (no-op when it is there)."""
    if current_revision(engine) == head_revision():
        return
    logger.info("upgrading catalog schema to %s", revision)
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    _run(engine, "downgrade", revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return script.get_current_head()


def first_line(exc: BaseException) -> str:
    """The database's own words for a failure, without the statement or any value: the
    driver's message up to its first line (PostgreSQL's DETAIL line names key values)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0][:200] if text else type(orig).__name__
