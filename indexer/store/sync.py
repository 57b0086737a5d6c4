"""Keep the published vector index in step with the catalog.

Incremental when possible: rows above the manifest's catalog high-water mark are added,
tombstoned rows removed, and a new version is published. A full build (train + tune
``nprobe``) happens on ``--rebuild``, on the first build, when the index kind should
change with the catalog's size (exact -> IVF), and when the catalog has grown past a
multiple of the size the IVF was trained on.

The series index (:mod:`indexer.store.series`) goes with it, in the same version: the
series table is refreshed from the items, then the series changed since the published
version's series revision are updated in the series index (or it is built afresh, by
the same rules as the instance index).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import ModelMismatchError
from indexer.store.catalog import Catalog, ModelBinding
from indexer.store.index_files import IndexManifest, IndexStore, LoadedIndex, SeriesIndex
from indexer.store.index_params import (
    DEFAULT_COMPRESSION,
    Compression,
    choose_kind,
    needs_retrain,
)
from indexer.store.series import (
    POOLING,
    refresh_series,
    series_changes,
    series_revision,
    series_vectors,
)
from indexer.store.vector_index import BuildFacts, BuiltIndex, add, build_index, remove

logger = logging.getLogger(__name__)

INDEX_SUBDIR = "index"


def index_store(index_dir: Path) -> IndexStore:
    return IndexStore(index_dir / INDEX_SUBDIR)


def _all_vectors(catalog: Catalog, upto: int) -> tuple[np.ndarray, np.ndarray]:
    ids, vecs = [], []
    for chunk_ids, chunk_vecs in catalog.vectors(upto_id=upto):
        ids.append(chunk_ids)
        vecs.append(chunk_vecs)
    if not ids:
        dim = (catalog.binding() or ModelBinding("", 0, "", "")).embedding_dim
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    return np.concatenate(ids), np.concatenate(vecs)


#: Series are searched without re-ranking (and are ~1/100 of the instances): float32 lists.
SERIES_COMPRESSION: Compression = "none"


def _extra(catalog: Catalog, binding: ModelBinding, high_water: int, count: int) -> dict[str, Any]:
    return {
        "catalog_id": catalog.catalog_id(),
        "catalog_high_water": high_water,
        "count": count,
        "model_fingerprint": binding.model_fingerprint,
        "recipe": binding.recipe,
        "render_policy": binding.render_policy,
        "embedding_dim": binding.embedding_dim,
    }


def _series_full(catalog: Catalog, binding: ModelBinding) -> SeriesIndex:
    revision = series_revision(catalog)  # read first: a later change is taken next time
    ids, vectors = series_vectors(catalog, binding.embedding_dim)
    built = build_index(ids, vectors, compress=SERIES_COMPRESSION)
    logger.info("built %s series index of %d series", built.facts.kind, len(ids))
    return SeriesIndex(built, POOLING, revision)


def _series_update(
    catalog: Catalog, binding: ModelBinding, loaded: LoadedIndex
) -> SeriesIndex | None:
    """The series index updated with the series changed since ``loaded``'s; ``None`` when
    nothing changed. Built afresh when ``loaded`` has none or its kind no longer fits."""
    refresh_series(catalog, binding.embedding_dim)
    published = loaded.manifest.series
    if loaded.series is None or published is None or published.pooling != POOLING:
        return _series_full(catalog, binding)
    changes = series_changes(catalog, binding.embedding_dim, published.revision)
    if changes.empty:
        return None
    count = int(loaded.series.ntotal) + len(changes.updated_ids)  # at most
    facts: BuildFacts = published.facts
    if choose_kind(count, compress=SERIES_COMPRESSION) != facts.kind or (
        facts.kind != "flat" and needs_retrain(count, facts.trained_on)
    ):
        return _series_full(catalog, binding)
    remove(loaded.series, np.concatenate([changes.updated_ids, changes.removed_ids]))
    add(loaded.series, changes.updated_ids, changes.updated_vectors)
    return SeriesIndex(BuiltIndex(loaded.series, facts), POOLING, changes.revision)


def full_build(
    catalog: Catalog,
    store: IndexStore,
    binding: ModelBinding,
    compress: Compression = DEFAULT_COMPRESSION,
) -> IndexManifest:
    high_water = catalog.high_water()
    ids, vectors = _all_vectors(catalog, high_water)
    built = build_index(ids, vectors, compress=compress)
    logger.info("built %s index of %d vectors", built.facts.kind, len(ids))
    refresh_series(catalog, binding.embedding_dim)
    series = _series_full(catalog, binding)
    return store.publish(built, _extra(catalog, binding, high_water, len(ids)), series)


def _needs_full_build(manifest: IndexManifest, binding: ModelBinding, n_active: int) -> str:
    if manifest.model_fingerprint != binding.model_fingerprint:
        return "model changed"
    kind = choose_kind(n_active, compress=manifest.facts.compress)
    if kind != manifest.facts.kind:
        return f"size {n_active} calls for a {kind} index"
    if manifest.facts.kind != "flat" and needs_retrain(n_active, manifest.facts.trained_on):
        return "grown past the trained size"
    return ""


def sync_index(
    catalog: Catalog,
    index_dir: Path,
    binding: ModelBinding,
    *,
    rebuild: bool = False,
    compress: Compression | None = None,
) -> dict[str, Any]:
    """Publish a version of the index that matches the catalog; returns the manifest.

    ``compress`` (``none``, ``sq8``, ``pq``) applies to full builds; ``None`` keeps the
    published index's choice. Compressed indexes are re-ranked exactly at search time.
    """
    store = index_store(index_dir)
    manifest = store.current()
    if compress is None:
        compress = manifest.facts.compress if manifest is not None else DEFAULT_COMPRESSION
    elif manifest is not None and compress != manifest.facts.compress:
        rebuild = True
    n_active = catalog.count()
    why = "rebuild asked for" if rebuild else "first build" if manifest is None else ""
    if manifest is not None and not why:
        if manifest.model_fingerprint != binding.model_fingerprint:
            raise ModelMismatchError("the published index was built with another model")
        why = _needs_full_build(manifest, binding, n_active)
    if why:
        logger.info("full index build: %s", why)
        return full_build(catalog, store, binding, compress).model_dump(mode="json")
    assert manifest is not None
    loaded = store.load()
    high_water = catalog.high_water()
    added = 0
    for ids, vectors in catalog.vectors(after_id=manifest.catalog_high_water, upto_id=high_water):
        add(loaded.index, ids, vectors)
        added += len(ids)
    removed = remove(loaded.index, catalog.removed_ids())
    series = _series_update(catalog, binding, loaded)
    if not added and not removed and series is None:
        return manifest.model_dump(mode="json")
    if series is None and loaded.series is not None and manifest.series is not None:
        series = SeriesIndex(BuiltIndex(loaded.series, manifest.series.facts), POOLING,
                             manifest.series.revision)  # fmt: skip
    built = BuiltIndex(index=loaded.index, facts=manifest.facts)
    count = int(loaded.index.ntotal)
    logger.info("index update: %d added, %d removed, %d total", added, removed, count)
    extra = _extra(catalog, binding, high_water, count)
    return store.publish(built, extra, series).model_dump(mode="json")
