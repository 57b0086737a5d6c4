"""``medsearch serve``, added to the indexer's command line (indexer never imports service)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from indexer.cli.app import app as cli_app
from indexer.cli.app import main as cli_main


def serve(
    index: Annotated[Path, typer.Option("--index", envvar="MEDSEARCH_INDEX_DIR")],
    model: Annotated[Path, typer.Option("--model", envvar="MEDSEARCH_MODEL_DIR")],
    host: Annotated[str, typer.Option(envvar="MEDSEARCH_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="MEDSEARCH_PORT")] = 8000,
    allow_unauthenticated: Annotated[
        bool, typer.Option(help="bind beyond loopback without API keys (trusted networks)")
    ] = False,
) -> None:
    """Serve search over --index with --model (settings: MEDSEARCH_* variables)."""
    from pydantic import ValidationError

    from service.config import ServiceSettings

    overrides: dict[str, object] = {
        "index_dir": index,
        "model_dir": model,
        "host": host,
        "port": port,
    }
    if allow_unauthenticated:  # otherwise MEDSEARCH_ALLOW_UNAUTHENTICATED decides
        overrides["allow_unauthenticated"] = True
    try:
        settings = ServiceSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            typer.echo(f"error: {error['msg'].removeprefix('Value error, ')}", err=True)
        sys.exit(2)
    # imported once the settings are accepted: a refusal answers before the model stack loads
    import uvicorn

    from service.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


def main() -> None:
    cli_app.command("serve")(serve)
    cli_main()
