"""``medsearch index build`` and ``index add``: run the bulk pipeline over sources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from indexer.cli.options import IndexOpt, ModelOpt, output_file

Sources = Annotated[list[str], typer.Argument(help="folders, zip/tar files, DICOMDIRs, PACS")]
Workers = Annotated[
    int, typer.Option(min=1, help="decoder processes (decode + render + preprocess)")
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=1024,
        help="images per encoder run (default: MEDSEARCH_BATCH_SIZE, 8; 32-64 on a GPU)",
    ),
]
IoThreads = Annotated[
    int, typer.Option(min=1, max=64, help="threads reading archive members and PACS instances")
]
Metadata = Annotated[Path | None, typer.Option(help="sidecar CSV of labels")]
Key = Annotated[str, typer.Option(help="the sidecar column holding image paths")]
Frames = Annotated[
    str | None,
    typer.Option(help="multi-frame DICOM: middle or all (default: MEDSEARCH_FRAMES, middle)"),
]
ShowProgress = Annotated[bool, typer.Option(help="progress bar on stderr")]
Engine = Annotated[str, typer.Option(help="local (this host) or ray (a Ray cluster)")]
RayAddress = Annotated[
    str | None,
    typer.Option(
        envvar="RAY_ADDRESS",
        help="ray: a running cluster (auto, host:6379); default: start one here",
    ),
]
Encoders = Annotated[int, typer.Option(min=1, help="ray: encoder actors (one per GPU)")]
GpusPerEncoder = Annotated[float, typer.Option(min=0, help="ray: GPUs per encoder (0: CPU)")]
DecodeCpus = Annotated[
    int | None, typer.Option(min=1, help="ray: decode actors, 1 CPU each (default: --workers)")
]
SharedPaths = Annotated[
    bool | None,
    typer.Option(
        "--shared-paths/--ship-files",
        help="ray: workers read files by path, or the driver sends their bytes "
        "(default: by path when the cluster is this host alone)",
    ),
]


def engine_options(engine: str, **ray: Any) -> dict[str, Any]:
    """``BuildOptions`` fields for ``--engine``; without Ray, says how to install it."""
    from indexer.pipeline.ray_engine import RayOptions, import_ray

    if engine not in ("local", "ray"):
        raise typer.BadParameter("--engine must be local or ray")
    options = RayOptions(**ray)
    if engine == "local":
        if options != RayOptions():
            raise typer.BadParameter("--ray-address, --encoders, ... need --engine ray")
        return {}
    import_ray()  # refused now, not once the catalog is open
    return {"engine": "ray", "ray": options}


def run(command: str, sources: list[str], index: Path, model: Path, **kw: Any) -> None:
    from indexer.errors import SourceError
    from indexer.pipeline.runner import BuildOptions, run_build
    from indexer.settings import ImagingSettings
    from indexer.sources.dicomweb import is_dicomweb
    from indexer.sources.dicomweb_client import DicomWebSettings
    from indexer.store.retries import ALL, RetryPolicy

    for source in sources:  # now, before the index directory and its catalog are made
        if "://" not in source and not Path(source).expanduser().exists():
            raise SourceError(f"{source}: no such file or directory")
    forced = list(kw.pop("retry_reason", None) or [])
    forced += [ALL] if kw.pop("retry_failed", False) else []
    try:
        retry = RetryPolicy.forcing(forced)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--retry-reason") from None
    frames = kw.pop("frames")
    if frames not in (None, "middle", "all"):
        raise typer.BadParameter("--frames must be middle or all")
    imaging = ImagingSettings() if frames is None else ImagingSettings(frames=frames)
    if any(is_dicomweb(source) for source in sources):
        DicomWebSettings()  # MEDSEARCH_DICOMWEB_*: refused now, not once the model has loaded
    report_path: Path | None = kw.pop("report", None)
    output_file(report_path, "--report")  # now, not once the build has run
    options = BuildOptions(
        sources=sources,
        index_dir=index,
        model_dir=model,
        sidecar=kw.pop("metadata"),
        sidecar_key=kw.pop("key"),
        imaging=imaging,
        command=command,
        retry=retry,
        **kw,
    )
    result = run_build(options).to_dict()
    if report_path is not None:
        report_path.write_text(json.dumps(result, indent=2))
    failed = ", ".join(f"{k} {v}" for k, v in sorted(result["failed"].items())) or "none"
    skipped = sum(result["skipped"].values())
    why = ", ".join(
        f"{k.removeprefix('skipped: ')}: {n}" for k, n in sorted(result["skipped"].items())
    )
    skipped_why = f"{skipped} ({why})" if skipped else "0"
    limiting = result["stages"].get("limiting_stage") or "-"
    pruned = f"pruned {result['pruned']} whose files are gone; " if result["pruned"] else ""
    typer.echo(
        f"indexed {result['indexed']}, skipped {skipped_why} and "
        f"{result['duplicates']} duplicates, failed: {failed}; {pruned}"
        f"{result['seconds']:.1f} s, {result['images_per_s']:.1f} images/s "
        f"(limited by {limiting}); "
        f"index {result['index'].get('version')} holds {result['index'].get('count')}"
    )


def build(
    sources: Sources,
    index: IndexOpt,
    model: ModelOpt,
    workers: Workers = 2,
    batch_size: BatchSize = None,
    io_threads: IoThreads = 4,
    rebuild: Annotated[bool, typer.Option(help="retrain the vector index from scratch")] = False,
    metadata: Metadata = None,
    key: Key = "path",
    frames: Frames = None,
    report: Annotated[Path | None, typer.Option(help="write the run report (JSON)")] = None,
    progress: ShowProgress = True,
    retry_failed: Annotated[
        bool, typer.Option(help="retry every failed source, whatever its reason and attempts")
    ] = False,
    retry_reason: Annotated[
        list[str] | None,
        typer.Option(help="retry the failures with this reason, e.g. corrupt (repeatable)"),
    ] = None,
    engine: Engine = "local",
    ray_address: RayAddress = None,
    encoders: Encoders = 1,
    gpus_per_encoder: GpusPerEncoder = 0.0,
    decode_cpus: DecodeCpus = None,
    shared_paths: SharedPaths = None,
    series_sample: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="index N slices per DICOM series, evenly spaced along the slice order "
            "(recorded: later runs keep it; default every slice)",
        ),
    ] = None,
    prune: Annotated[
        bool,
        typer.Option(
            help="remove the items whose files are gone from the sources (or, for a PACS, "
            "instances no longer listed in the studies it returns)"
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option(help="--prune even when it removes over 25% of a source's items")
    ] = False,
) -> None:
    """Index SOURCES into --index (resumable: rerun after a crash to continue).

    Sources that failed for a transient reason (decoder crashed, decode timeout, decode
    memory limit, cannot read source, internal error) are retried by later runs, up to 3
    attempts in all; other failures only with --retry-failed or --retry-reason."""
    chosen = engine_options(
        engine, address=ray_address, encoders=encoders, gpus_per_encoder=gpus_per_encoder,
        decode_cpus=decode_cpus, shared_paths=shared_paths,
    )  # fmt: skip
    run(
        "build", sources, index, model, workers=workers, batch_size=batch_size,
        io_threads=io_threads, rebuild=rebuild, metadata=metadata, key=key, frames=frames,
        report=report, progress=progress, retry_failed=retry_failed, retry_reason=retry_reason,
        series_sample=series_sample, prune=prune, force=force, **chosen,
    )  # fmt: skip


def add(
    sources: Sources,
    index: IndexOpt,
    model: ModelOpt,
    workers: Workers = 2,
    batch_size: BatchSize = None,
    io_threads: IoThreads = 4,
    metadata: Metadata = None,
    key: Key = "path",
    frames: Frames = None,
    progress: ShowProgress = True,
) -> None:
    """Add new items from SOURCES to an existing index."""
    run(
        "add", sources, index, model, workers=workers, batch_size=batch_size,
        io_threads=io_threads, metadata=metadata, key=key, frames=frames, progress=progress,
    )  # fmt: skip
