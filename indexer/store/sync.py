"""Keep the published vector index in step with the catalog.

Incremental when possible: rows above the manifest's catalog high-water mark are added,
tombstoned rows removed, and a new version is published. A full build (train + tune
``nprobe``) happens on ``--rebuild``, on the first build, when the index kind should
change with the catalog's size (exact -> IVF), and when the catalog has grown past a
multiple of the size the IVF was trained on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import ModelMismatchError
from indexer.store.catalog import Catalog, ModelBinding
from indexer.store.index_files import IndexManifest, IndexStore
from indexer.store.index_params import Compression, choose_kind, needs_retrain
from indexer.store.vector_index import BuiltIndex, add, build_index, remove

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


def full_build(
    catalog: Catalog, store: IndexStore, binding: ModelBinding, compress: Compression = "none"
) -> IndexManifest:
    high_water = catalog.high_water()
    ids, vectors = _all_vectors(catalog, high_water)
    built = build_index(ids, vectors, compress=compress)
    logger.info("built %s index of %d vectors", built.facts.kind, len(ids))
    return store.publish(built, _extra(catalog, binding, high_water, len(ids)))


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
        compress = manifest.facts.compress if manifest is not None else "none"
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
    if not added and not removed:
        return manifest.model_dump(mode="json")
    built = BuiltIndex(index=loaded.index, facts=manifest.facts)
    count = int(loaded.index.ntotal)
    logger.info("index update: %d added, %d removed, %d total", added, removed, count)
    return store.publish(built, _extra(catalog, binding, high_water, count)).model_dump(mode="json")
