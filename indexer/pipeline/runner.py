"""Runner: drives reader -> decoder -> encoder -> writer per batch, then publishes the index.

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
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from indexer.encoders.encoder import Encoder
from indexer.errors import CatalogError, VectorIndexError
from indexer.imaging.guard import DecoderPool
from indexer.imaging.types import RENDER_POLICY
from indexer.pipeline.decoder import decode_batch
from indexer.pipeline.encoder import embed_batch
from indexer.pipeline.progress import Progress, count_items
from indexer.pipeline.reader import read_batches
from indexer.pipeline.writer import write_batch
from indexer.settings import EncoderSettings, ImagingSettings
from indexer.sources import SidecarTable
from indexer.store import db
from indexer.store.catalog import CATALOG_FILE, Catalog, ModelBinding, catalog_url
from indexer.store.retries import RetryPolicy
from indexer.store.sync import index_store, sync_index

logger = logging.getLogger(__name__)

STAGES = ("read", "decode", "encode", "write")


@dataclass
class BuildOptions:
    sources: Sequence[str]
    index_dir: Path
    model_dir: Path
    workers: int = 2
    batch_size: int = 32
    rebuild: bool = False
    recipe: str | None = None
    sidecar: Path | None = None
    sidecar_key: str = "path"
    imaging: ImagingSettings = field(default_factory=ImagingSettings)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    progress: bool = True
    command: str = "build"
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass
class BuildReport:
    run_id: int
    indexed: int = 0
    duplicates: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    batches: list[dict[str, float]] = field(default_factory=list)
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
            "index": self.index,
        }


def open_catalog(index_dir: Path, *, read_only: bool = False, create: bool = True) -> Catalog:
    """The catalog of ``index_dir``, checked to be the one its published index came from.

    ``read_only`` (``stats``, ``verify``, ``search``): nothing is created or migrated; a
    missing index directory or catalog is an error instead of a new empty catalog.
    ``create=False`` (``remove``, ``rebuild``): the index must exist, but may be written.
    """
    must_exist = read_only or not create
    if must_exist and not index_dir.is_dir():
        raise CatalogError(f"{index_dir}: no index here (no such directory)")
    index_dir.mkdir(parents=True, exist_ok=True)
    url = catalog_url(index_dir)
    try:
        published = index_store(index_dir).current()
    except VectorIndexError:  # damaged: `index verify` says so, `index rebuild` repairs it
        published = None
    own_file = index_dir / CATALOG_FILE
    if url == db.sqlite_url(own_file) and not own_file.exists():
        if published is not None:
            raise CatalogError(
                f"{index_dir} holds an index but not its catalog ({CATALOG_FILE}): restore "
                "the file, or set MEDSEARCH_CATALOG_URL if the catalog is on a server"
            )
        if must_exist:
            raise CatalogError(f"{index_dir}: no index here (no {CATALOG_FILE})")
    if read_only:
        try:
            catalog = Catalog.open(db.read_only_url(url), upgrade=False)
        except OperationalError:  # no such database: the message may name the URL
            raise CatalogError(
                f"cannot open the catalog of {index_dir} for reading: check "
                "MEDSEARCH_CATALOG_URL or the catalog file"
            ) from None
    else:
        catalog = Catalog.open(url)
    if published is not None:
        try:
            catalog.check_index(published.catalog_id, index_dir)
        except CatalogError:
            catalog.close()
            raise
    return catalog


def binding_for(encoder: Encoder, recipe: str | None) -> ModelBinding:
    return ModelBinding(
        model_fingerprint=encoder.fingerprint,
        embedding_dim=encoder.manifest.embedding_dim,
        recipe=encoder.recipe(recipe).name,
        render_policy=RENDER_POLICY,
    )


def run_build(options: BuildOptions) -> BuildReport:
    started = time.perf_counter()
    encoder = Encoder.load(options.model_dir, options.encoder)
    binding = binding_for(encoder, options.recipe)
    recipe = encoder.recipe(binding.recipe)
    sidecar = SidecarTable.load(options.sidecar, options.sidecar_key) if options.sidecar else None
    catalog = open_catalog(options.index_dir)
    try:
        catalog.bind_model(binding)
    except BaseException:
        catalog.close()
        raise
    run_id = catalog.start_run(options.command, list(options.sources))
    report = BuildReport(run_id=run_id)
    total = count_items(options.sources, catalog, options.retry) if options.progress else None
    status = "failed"
    try:
        with (
            DecoderPool(options.imaging, options.workers) as pool,
            Progress(total, enabled=options.progress) as progress,
        ):
            batches = read_batches(
                options.sources,
                catalog,
                batch_size=options.batch_size,
                sidecar=sidecar,
                counts=report.skipped,
                retry=options.retry,
            )
            t_read = time.perf_counter()
            for batch in batches:
                times = {"read": time.perf_counter() - t_read}
                t = time.perf_counter()
                results = decode_batch(pool, batch, options.imaging.max_file_bytes, recipe)
                times["decode"] = time.perf_counter() - t
                t = time.perf_counter()
                images = [image for result in results if result.ok for image in result.images]
                embeddings = embed_batch(encoder, images, binding.recipe)
                times["encode"] = time.perf_counter() - t
                t = time.perf_counter()
                indexed, duplicates, _failed = write_batch(
                    catalog, run_id, batch, results, embeddings
                )
                times["write"] = time.perf_counter() - t
                report.indexed += indexed
                report.duplicates += duplicates
                report.failed.update(r.reason.value for r in results if r.reason is not None)
                for stage, seconds in times.items():
                    report.stage_seconds[stage] += seconds
                report.batches.append({k: round(v, 4) for k, v in times.items()})
                logger.debug("batch of %d: %s", len(batch), times)
                progress.advance(
                    len(batch), indexed=report.indexed, failed=sum(report.failed.values())
                )
                t_read = time.perf_counter()
        report.index = sync_index(catalog, options.index_dir, binding, rebuild=options.rebuild)
        status = "done"
    finally:
        report.seconds = time.perf_counter() - started
        catalog.finish_run(run_id, report.to_dict(), status)
        write_report(options.index_dir, report)
        catalog.close()
    return report


def write_report(index_dir: Path, report: BuildReport) -> Path:
    reports = index_dir / "reports"
    reports.mkdir(exist_ok=True)
    path = reports / f"run-{report.run_id:06d}.json"
    path.write_text(json.dumps(report.to_dict(), indent=2))
    return path
