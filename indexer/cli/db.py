"""``medsearch db upgrade``: bring a catalog's schema to the current revision."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Catalog schema (Alembic).")


@app.command()
def upgrade(
    index: Annotated[Path | None, typer.Option("--index", help="index directory")] = None,
    url: Annotated[str | None, typer.Option(help="a database URL instead of --index")] = None,
) -> None:
    """Run the schema migrations up to the newest revision."""
    from indexer.store import db
    from indexer.store.catalog import catalog_url

    if (index is None) == (url is None):
        raise typer.BadParameter("give exactly one of --index or --url")
    target = url or catalog_url(index)  # type: ignore[arg-type]
    engine = db.make_engine(target)
    try:
        before = db.current_revision(engine)
        db.upgrade(engine)
        typer.echo(f"catalog schema: {before or 'empty'} -> {db.current_revision(engine)}")
    finally:
        engine.dispose()
