"""The ``medsearch`` command line (typer). Sub-commands live in their own modules."""

from __future__ import annotations

import logging
import sys

import typer

from indexer.cli import db, embed, index, model, preview
from indexer.errors import MedsearchError

app = typer.Typer(
    name="medsearch",
    no_args_is_help=True,
    add_completion=False,
    help="Similarity search for medical images with MedImageInsight.",
)
app.add_typer(model.app, name="model")
app.add_typer(index.app, name="index")
app.add_typer(db.app, name="db")
app.command("embed")(embed.embed)
app.command("preview")(preview.preview)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="log at INFO level")) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    try:
        app()
    except MedsearchError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
