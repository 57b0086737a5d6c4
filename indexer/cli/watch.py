"""``medsearch index watch``: keep an index in step with a PACS (:mod:`indexer.watch`)."""

from __future__ import annotations

from typing import Annotated

import typer

from indexer.cli.options import IndexOpt, ModelOpt


def watch(
    source: Annotated[str, typer.Argument(help="the PACS: dicomweb+http(s)://host/dicom-web")],
    index: IndexOpt,
    model: ModelOpt,
    interval: Annotated[
        float, typer.Option(min=0.05, help="seconds between polls once caught up")
    ] = 5.0,
    batch: Annotated[
        int, typer.Option(min=1, max=1024, help="instances per batch (indexed, then published)")
    ] = 32,
    workers: Annotated[int, typer.Option(min=1, help="decoder processes per batch")] = 1,
    reconcile: Annotated[
        float,
        typer.Option(
            min=0,
            help="seconds between full deletion checks of every study held (0: only at "
            "start and when a deletion is suspected)",
        ),
    ] = 3600.0,
    orthanc: Annotated[
        str,
        typer.Option(
            help="auto: follow Orthanc's change feed if the server is an Orthanc (its "
            "/system at the DICOMweb root's parent); off: poll QIDO-RS by study date; or "
            "Orthanc's REST root URL"
        ),
    ] = "auto",
    force: Annotated[
        bool, typer.Option(help="apply deletions even when over 25% of the indexed PACS")
    ] = False,
) -> None:
    """Follow SOURCE: index new instances within seconds and apply deletions, until
    SIGINT or SIGTERM. The cursor is kept in the catalog: a restarted watcher resumes
    where it stopped; a PACS that is away is waited for."""
    from indexer.sources.dicomweb_client import DicomWebSettings
    from indexer.watch.loop import Watcher, WatchOptions

    if orthanc not in ("auto", "off") and not orthanc.startswith(("http://", "https://")):
        raise typer.BadParameter("--orthanc is auto, off or an http(s) URL")
    options = WatchOptions(
        source=source, index_dir=index, model_dir=model, interval_s=interval, batch=batch,
        workers=workers, reconcile_s=reconcile, orthanc=orthanc, force=force,
        dicomweb=DicomWebSettings(),  # MEDSEARCH_DICOMWEB_*: refused before the model loads
    )  # fmt: skip
    watcher = Watcher(options)
    try:
        typer.echo(f"watching {watcher.source_uri} (stop with Ctrl-C)", err=True)
        watcher.run()
    finally:
        watcher.close()
