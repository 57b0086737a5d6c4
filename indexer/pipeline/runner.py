"""Runner: a build's options, its catalog and model, the engine that runs the stages
(:mod:`indexer.pipeline.local`: reader -> fetchers -> preparers -> embedder -> writer,
concurrently; or :mod:`indexer.pipeline.ray_engine`, the same stages on a Ray cluster with
the same writer on this host), the run report, then the index update and publication.

Crash safety comes from the order of effects: a batch's items, embeddings and failures
are committed in one transaction; the vector index is derived from committed rows and
published atomically afterwards. A run killed at any point leaves the catalog at its last
committed batch and the published index at its last version; the next run skips every
source URI the catalog has seen (indexed or failed) and continues, and its index update
picks up every committed row. Nothing is indexed twice (identity is unique per model).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from sqlalchemy.exc import DatabaseError, OperationalError

from indexer.encoders.encoder import Encoder
from indexer.encoders.manifest import read_manifest
from indexer.encoders.preprocess import manifest_recipe
from indexer.errors import CatalogError, MedsearchError, VectorIndexError
from indexer.imaging.types import RENDER_POLICY
from indexer.pipeline.embedder import Embedder
from indexer.pipeline.items import ReadItem, fetch
from indexer.pipeline.local import run_local
from indexer.pipeline.preparer import Prepared, Preparer
from indexer.pipeline.progress import Progress, count_items
from indexer.pipeline.prune import Listings, prune
from indexer.pipeline.ray_engine import RayEngine, RayOptions
from indexer.pipeline.reader import new_items
from indexer.pipeline.writer import Writer
from indexer.settings import EncoderSettings, ImagingSettings
from indexer.sources import SidecarTable
from indexer.store import db
from indexer.store.catalog import CATALOG_FILE, Catalog, ModelBinding, catalog_url
from indexer.store.retries import RetryPolicy
from indexer.store.sync import index_store, sync_index
from indexer.store.writer_lock import lock_index

logger = logging.getLogger(__name__)

STAGES = ("read", "fetch", "prepare", "embed", "write")


class Listing(Protocol):
    """What a run reads instead of its ``sources`` (``index reembed``: another index's
    items), less what ``catalog`` has seen."""

    def items(
        self, catalog: Catalog, counts: dict[str, int], retry: RetryPolicy
    ) -> Iterator[ReadItem]: ...

    def count(self, catalog: Catalog, retry: RetryPolicy) -> int | None: ...

    def check_target(self, catalog: Catalog) -> None:
        """Refuse to write into ``catalog`` (the run's own) when it is the one read."""


@dataclass
class BuildOptions:
    sources: Sequence[str]
    index_dir: Path
    model_dir: Path
    workers: int = 2  # decoder processes (decode + render + preprocess)
    batch_size: int | None = None  # images per encoder run; None: EncoderSettings.batch_size
    io_threads: int = 4  # threads reading archive members and PACS instances
    rebuild: bool = False
    recipe: str | None = None
    sidecar: Path | None = None
    sidecar_key: str = "path"
    imaging: ImagingSettings = field(default_factory=ImagingSettings)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    progress: bool = True
    command: str = "build"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    engine: Literal["local", "ray"] = "local"
    ray: RayOptions | None = None  # the ray engine's (None: its defaults)
    listing: Listing | None = None  # read this instead of ``sources``
    series_sample: int | None = None  # slices per DICOM series (None: the index's choice)
    prune: bool = False  # remove the items whose source is gone (see pipeline.prune)
    force: bool = False  # prune more than prune.MAX_SHARE of a source


@dataclass
class BuildReport:
    run_id: int
    indexed: int = 0
    duplicates: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    batches: int = 0
    pruned: int = 0
    stages: dict[str, Any] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "indexed": self.indexed,
            "duplicates": self.duplicates,
            "failed": dict(self.failed),
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.indexed / self.seconds, 3) if self.seconds else 0.0,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "batches": self.batches,
            "pruned": self.pruned,
            "stages": self.stages,
            "index": self.index,
        }


def open_catalog(
    index_dir: Path,
    *,
    read_only: bool = False,
    create: bool = True,
    url: str | None = None,
    variable: str = "MEDSEARCH_CATALOG_URL",
) -> Catalog:
    """The catalog of ``index_dir``, checked to be the one its published index came from.

    ``read_only`` (``stats``, ``verify``, ``search``): nothing is created or migrated; a
    missing index directory or catalog is an error instead of a new empty catalog.
    ``create=False`` (``remove``, ``rebuild``): the index must exist, but may be written.
    ``url``: the catalog's URL (default: :func:`catalog_url`), set by ``variable`` (named
    in the refusals).
    """
    must_exist = read_only or not create
    if must_exist and not index_dir.is_dir():
        raise CatalogError(f"{index_dir}: no index here (no such directory)")
    if index_dir.exists() and not index_dir.is_dir():
        raise CatalogError(f"{index_dir} is a file, not an index directory")
    index_dir.mkdir(parents=True, exist_ok=True)
    url = url or catalog_url(index_dir)
    if read_only:
        return _open_checked(index_dir, url, True, must_exist, variable)
    release = lock_index(index_dir)  # one writing process per index
    try:
        catalog = _open_checked(index_dir, url, False, must_exist, variable)
    except BaseException:
        release()
        raise
    catalog.hold_until_closed(release)
    return catalog


def _open_checked(
    index_dir: Path, url: str, read_only: bool, must_exist: bool, variable: str
) -> Catalog:
    try:
        published = index_store(index_dir).current()
    except VectorIndexError:  # damaged: `index verify` says so, `index rebuild` repairs it
        published = None
    own_file = index_dir / CATALOG_FILE
    if url == db.sqlite_url(own_file) and not own_file.exists():
        if published is not None:
            raise CatalogError(
                f"{index_dir} holds an index but not its catalog ({CATALOG_FILE}): restore "
                f"the file, or set {variable} if the catalog is on a server"
            )
        if must_exist:
            raise CatalogError(f"{index_dir}: no index here (no {CATALOG_FILE})")
        if not read_only:
            _create_sqlite_catalog(own_file)
    try:
        catalog = (
            Catalog.open(db.read_only_url(url), upgrade=False) if read_only else Catalog.open(url)
        )
    except OperationalError:  # a server that is down, no such database: may name the URL
        reading = " for reading" if read_only else ""
        raise CatalogError(
            f"cannot open the catalog of {index_dir}{reading}: check {variable} or the catalog file"
        ) from None
    except (DatabaseError, UnicodeDecodeError) as exc:  # a damaged file, or not a database
        raise CatalogError(
            f"the catalog of {index_dir} is damaged or not a catalog ({db.first_line(exc)}): "
            "restore it from a backup, or build the index again"
        ) from None
    if published is not None:
        try:
            catalog.check_index(published.catalog_id, index_dir, variable)
        except CatalogError:
            catalog.close()
            raise
    return catalog


def _create_sqlite_catalog(path: Path) -> None:
    """Create and migrate a new SQLite catalog under a temporary name, then rename it into
    place: pysqlite commits each CREATE TABLE at once, so a build killed during the first
    migration left tables without their alembic revision, and every later run failed on
    "table already exists"."""
    partial = path.with_name(path.name + ".new")
    for leftover in path.parent.glob(partial.name + "*"):  # a killed creation's files
        leftover.unlink()
    Catalog.open(db.sqlite_url(partial)).close()  # the WAL is checkpointed and removed
    os.replace(partial, path)


def binding_for(encoder: Encoder, recipe: str | None) -> ModelBinding:
    return ModelBinding(
        model_fingerprint=encoder.fingerprint,
        embedding_dim=encoder.manifest.embedding_dim,
        recipe=encoder.recipe(recipe).name,
        render_policy=RENDER_POLICY,
    )


def run_build(options: BuildOptions, encoder: Encoder | None = None) -> BuildReport:
    """Run a build; ``encoder``: one already loaded (the pipeline benchmark's stand-in)."""
    started = time.perf_counter()
    encoder_settings = options.encoder
    if options.batch_size is not None:
        encoder_settings = encoder_settings.model_copy(update={"batch_size": options.batch_size})
    ray_engine: RayEngine | None = None
    preparers: list[Preparer] = []
    if options.engine == "ray":  # the encoder actors load the model, not this process
        ray_engine = RayEngine(options, encoder_settings)
        binding = ray_engine.binding
        ray_engine.connect()  # a cluster that is not there is refused before the catalog
    else:
        # the decoder processes start first: they import their codecs while the model
        # loads (~1 s each on 2 cores), so the first batch does not wait for them
        manifest = encoder.manifest if encoder is not None else read_manifest(options.model_dir)
        recipe = manifest_recipe(manifest, options.recipe)
        preparers = [Preparer(options.imaging, recipe) for _ in range(options.workers)]
        try:
            loaded = encoder or Encoder.load(options.model_dir, encoder_settings)
        except BaseException:
            _close(preparers)
            raise
        binding = binding_for(loaded, options.recipe)
    try:
        sidecar = None
        if options.sidecar:
            sidecar = SidecarTable.load(options.sidecar, options.sidecar_key)
        catalog = open_catalog(options.index_dir)
    except BaseException:
        _close(preparers, ray_engine)
        raise
    listing = options.listing
    try:
        if options.prune and listing is not None:
            raise MedsearchError("--prune applies to builds from sources")
        if listing is not None:
            listing.check_target(catalog)
        catalog.bind_model(binding)
        catalog.check_patient_salt(options.imaging.salt_check(), record=True)
        series_sample = catalog.series_sample(options.series_sample)
        total = None
        if options.progress:
            total = (
                listing.count(catalog, options.retry)
                if listing is not None
                else count_items(options.sources, catalog, options.retry)
            )
    except BaseException:
        catalog.close()
        _close(preparers, ray_engine)
        raise
    run_id = catalog.start_run(options.command, list(options.sources))
    report = BuildReport(run_id=run_id)
    listings = Listings() if options.prune else None
    status = "failed"
    embedder: Embedder | None = None
    if ray_engine is None:
        embedder = Embedder(loaded, binding.recipe)
    try:
        with Progress(total, enabled=options.progress) as progress:

            def committed(batch: list[Prepared], counts: tuple[int, int, int]) -> None:
                report.indexed += counts[0]
                report.duplicates += counts[1]
                report.failed.update(
                    p.result.reason.value for p in batch if p.result.reason is not None
                )
                report.batches += 1
                progress.advance(
                    len(batch), indexed=report.indexed, failed=sum(report.failed.values())
                )

            items = (
                listing.items(catalog, report.skipped, options.retry)
                if listing is not None
                else new_items(
                    options.sources,
                    catalog,
                    sidecar=sidecar,
                    counts=report.skipped,
                    retry=options.retry,
                    series_sample=series_sample,
                    listings=listings,
                    index_dir=options.index_dir,
                )
            )
            if ray_engine is not None:
                stats = ray_engine.run(items, Writer(catalog, run_id), on_commit=committed)
                report.stages = {**stats.to_dict(), "engine": "ray", "ray": ray_engine.facts}
            else:
                assert embedder is not None
                for preparer in preparers:  # started before the model loaded: ready by now
                    preparer.wait_started()
                stats = run_local(
                    items,
                    lambda read: fetch(read, options.imaging.max_file_bytes),
                    preparers,
                    embedder,
                    Writer(catalog, run_id),
                    io_threads=options.io_threads,
                    on_commit=committed,
                )
                report.stages = stats.to_dict()
                report.stages["embed_cpu_s"] = round(embedder.cpu_s, 3)
            report.stage_seconds = stats.busy_s
        if listings is not None:  # every source was listed to the end: prune
            report.pruned = prune(catalog, listings.sources, force=options.force)
        report.index = sync_index(catalog, options.index_dir, binding, rebuild=options.rebuild)
        status = "done"
    finally:
        _close(preparers, ray_engine, succeeded=status == "done")
        report.seconds = time.perf_counter() - started
        catalog.finish_run(run_id, report.to_dict(), status)
        write_report(options.index_dir, report)
        catalog.close()
    return report


def _close(
    preparers: list[Preparer], ray_engine: RayEngine | None = None, succeeded: bool = False
) -> None:
    for preparer in preparers:
        preparer.close()
    if ray_engine is not None:
        ray_engine.close(succeeded)


def write_report(index_dir: Path, report: BuildReport) -> Path:
    reports = index_dir / "reports"
    reports.mkdir(exist_ok=True)
    path = reports / f"run-{report.run_id:06d}.json"
    path.write_text(json.dumps(report.to_dict(), indent=2))
    return path
