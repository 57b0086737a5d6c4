"""The ``medsearch`` command line (typer). Sub-commands live in their own modules."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError
from sqlalchemy.exc import SQLAlchemyError

from indexer.cli import db, embed, index, model, preview
from indexer.cli import eval as evaluation  # not `eval`: that is a builtin
from indexer.errors import MedsearchError
from indexer.store.db import first_line

app = typer.Typer(
    name="medsearch",
    no_args_is_help=True,
    add_completion=False,
    help="Similarity search for medical images with MedImageInsight.",
)
app.add_typer(model.app, name="model")
app.add_typer(index.app, name="index")
app.add_typer(db.app, name="db")
app.add_typer(evaluation.app, name="eval")
app.command("embed")(embed.embed)
app.command("preview")(preview.preview)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="log at INFO level")) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _settings_classes(cls: type[BaseSettings] = BaseSettings) -> Iterator[type[BaseSettings]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _settings_classes(sub)


def _variable(field: str, model: str | None = None) -> str:
    """``MEDSEARCH_...``: the environment variable of ``field`` (of the class ``model``)."""
    for cls in _settings_classes():
        if (model is None or cls.__name__ == model) and field in cls.model_fields:
            return f"{cls.model_config.get('env_prefix', '')}{field}".upper()
    return field


def _setting_refusals(exc: ValidationError | SettingsError) -> list[str] | None:
    """One line per refused setting, naming its variable; never the value (maybe a secret).

    ``None`` when ``exc`` is not about settings (a bug: let it show its traceback).
    """
    if isinstance(exc, SettingsError):  # a list or dict variable that is not JSON
        match = re.search(r'field "(\w+)"', str(exc))
        name = _variable(match.group(1)) if match else "MEDSEARCH_*"
        return [f'error: invalid setting {name}: not valid JSON (a list is written ["a", "b"])']
    if not any(cls.__name__ == exc.title for cls in _settings_classes()):
        return None
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        msg = error["msg"].removeprefix("Value error, ")
        field = error["loc"][0] if error["loc"] else None
        if isinstance(field, str):
            lines.append(f"error: invalid setting {_variable(field, exc.title)}: {msg}")
        else:  # a rule across fields
            lines.append(f"error: invalid settings: {msg}")
    return lines


def main() -> None:
    try:
        app()
    except MedsearchError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except SQLAlchemyError as exc:  # the catalog failed mid-run (locked, full, gone)
        typer.echo(f"error: the catalog: {first_line(exc)}", err=True)
        sys.exit(1)
    except (ValidationError, SettingsError) as exc:  # MEDSEARCH_* variables
        lines = _setting_refusals(exc)
        if lines is None:
            raise
        for line in lines:
            typer.echo(line, err=True)
        sys.exit(2)
