"""``medsearch serve``, added to the indexer's command line (indexer never imports service)."""

from __future__ import annotations

import logging
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
    """Serve search over --index with --model (settings: MEDSEARCH_* variables).

    Every setting is read and checked, and the model's manifest and the index's catalog
    opened, before the server starts: a bad value is refused (exit 2) naming its variable.
    """
    from service.config import EngineSettings, ServiceSettings

    overrides: dict[str, object] = {
        "index_dir": index,
        "model_dir": model,
        "host": host,
        "port": port,
    }
    if allow_unauthenticated:  # otherwise MEDSEARCH_ALLOW_UNAUTHENTICATED decides
        overrides["allow_unauthenticated"] = True
    # a refused value reaches indexer.cli.app.main(), which names its variable
    settings = ServiceSettings(**overrides)  # type: ignore[arg-type]
    engine = EngineSettings.for_service(settings)
    _check_directories(settings.index_dir, settings.model_dir, engine.imaging.salt_check())
    # imported once the settings are accepted: a refusal answers before the model stack loads
    import uvicorn

    from service.app import create_app

    app = create_app(settings, engine)
    _access_log_to_stdout()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)


def _access_log_to_stdout() -> None:
    """The app writes the access log itself (``service.access``), without the query strings
    uvicorn's would keep; on stdout and on by default, as uvicorn's was, so that a
    deployment's streams stay as they were (stderr: errors, and INFO lines with -v)."""
    access = logging.getLogger("service.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False


def _check_directories(index_dir: Path, model_dir: Path, salt_check: str) -> None:
    """What the lifespan would otherwise find out with a traceback: a directory without a
    model, an index without its catalog or published version, or built with another model.
    The catalog is opened for reading and checked as ``index stats`` does."""
    from indexer.encoders.manifest import read_manifest
    from indexer.errors import IndexMissingError, ModelMismatchError
    from indexer.pipeline.runner import open_catalog
    from indexer.store.sync import index_store

    model = read_manifest(model_dir)
    catalog = open_catalog(index_dir, read_only=True)
    try:  # uploads' patient keys must match the catalog's, or exclusion misses them
        if salt_check:
            catalog.check_patient_salt(salt_check, record=False)
    finally:
        catalog.close()
    published = index_store(index_dir).current()
    if published is None:
        raise IndexMissingError(f"{index_dir}: no index published (run `medsearch index build`)")
    if published.model_fingerprint != model.fingerprint:
        raise ModelMismatchError(
            f"the index in {index_dir} was built with model {published.model_fingerprint[:16]}, "
            f"not with {model_dir} ({model.fingerprint[:16]})"
        )


def main() -> None:
    cli_app.command("serve")(serve)
    cli_main()
