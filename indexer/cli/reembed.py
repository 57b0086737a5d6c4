"""``medsearch index reembed``: a new index of an old index's sources with another model.

``index rebuild`` is another thing: the vector index again from the catalog, same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from indexer.cli import build
from indexer.cli.options import IndexOpt, ModelOpt
from indexer.errors import MedsearchError

FromOpt = Annotated[
    Path, typer.Option("--from", help="the index whose sources to re-embed (only read)")
]
Recipe = Annotated[str | None, typer.Option(help="preprocessing recipe (default: the model's)")]


def _from_url(from_: Path) -> str:
    """The catalog of ``--from``: ``MEDSEARCH_FROM_CATALOG_URL``, else its SQLite file
    (``MEDSEARCH_CATALOG_URL`` is the new index's, as for every command)."""
    from indexer.settings import ReembedSettings
    from indexer.store import db
    from indexer.store.catalog import CATALOG_FILE

    configured = ReembedSettings().from_catalog_url
    if configured is not None:
        return configured.get_secret_value()
    own = from_ / CATALOG_FILE
    if from_.is_dir() and not own.exists():
        raise MedsearchError(
            f"{from_} has no {CATALOG_FILE}: if its catalog is on a server, set "
            "MEDSEARCH_FROM_CATALOG_URL to it (MEDSEARCH_CATALOG_URL is the new index's)"
        )
    return db.sqlite_url(own)


def reembed(
    from_: FromOpt,
    index: IndexOpt,
    model: ModelOpt,
    recipe: Recipe = None,
    workers: build.Workers = 2,
    batch_size: build.BatchSize = None,
    io_threads: build.IoThreads = 4,
    frames: Annotated[
        str | None, typer.Option(help="middle or all (default: as the old index was built)")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="write the run report (JSON)")] = None,
    progress: build.ShowProgress = True,
    engine: build.Engine = "local",
    ray_address: build.RayAddress = None,
    encoders: build.Encoders = 1,
    gpus_per_encoder: build.GpusPerEncoder = 0.0,
    decode_cpus: build.DecodeCpus = None,
    shared_paths: build.SharedPaths = None,
) -> None:
    """Re-read and re-embed every active item of --from into --index with --model.

    The old index is opened read-only and keeps serving; its source URIs and sidecar
    labels are reused. Resumable: rerun after a crash to continue. Sources that have
    vanished are recorded as 'cannot read source' and retried by later runs. Switch the
    service to the new index when this is done (README: blue/green re-embedding)."""
    from indexer.pipeline.reembed import Reembed
    from indexer.pipeline.runner import open_catalog

    chosen = build.engine_options(
        engine, address=ray_address, encoders=encoders, gpus_per_encoder=gpus_per_encoder,
        decode_cpus=decode_cpus, shared_paths=shared_paths,
    )  # fmt: skip
    if from_.resolve() == index.resolve():
        raise typer.BadParameter("--index must be a new directory, not the one of --from")
    old = open_catalog(
        from_, read_only=True, url=_from_url(from_), variable="MEDSEARCH_FROM_CATALOG_URL"
    )
    try:
        listing = Reembed(old)
        build.run(
            "reembed", [str(from_.resolve())], index, model, listing=listing, recipe=recipe,
            workers=workers, batch_size=batch_size, io_threads=io_threads, metadata=None,
            key="path", frames=frames or listing.frames, report=report, progress=progress,
            **chosen,
        )  # fmt: skip
    finally:
        old.close()
    if listing.vanished:
        typer.echo(
            f"{listing.vanished} of {listing.sources} sources have vanished: recorded as "
            "'cannot read source' (source vanished); rerun when they are back"
        )
