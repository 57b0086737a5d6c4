"""``index verify``: the catalog and the published index agree.

Checks: the index files match their manifest (size, sha256); the index holds exactly the
catalog's active ids up to the manifest's high-water mark; ``K`` probe queries (active
rows' own embeddings) find their own row first. The series index of the same version holds
exactly the series rows active at its revision (rows changed later are pending, as
catalog rows above the high-water mark are) and each finds itself first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from indexer.store.catalog import Catalog
from indexer.store.index_files import LoadedIndex
from indexer.store.series import series_rows_at
from indexer.store.sync import index_store
from indexer.store.vector_index import search


def index_ids(index: Any) -> npt.NDArray[np.int64]:
    """Every id stored in a FAISS index (IDMap/IDMap2 or IVF)."""
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    invlists: Any = ivf.invlists
    parts = []
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size:
            ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)
            parts.append(np.array(ids, dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


@dataclass
class VerifyReport:
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)


def _finds_itself(index: Any, item_id: int, vector: npt.NDArray[np.float32]) -> bool:
    """Whether a search with ``vector`` ranks ``item_id`` first, ties included: among the
    rows scoring as the best does. Identical images (blank slices, copies under new UIDs)
    tie in any number, so the search widens while every row it returned is tied."""
    k = 5
    while True:
        scores, ids = search(index, vector.reshape(1, -1), k)
        found = [i for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
        best = float(scores[0][0])
        tied = [int(i) for s, i in zip(scores[0], ids[0], strict=True) if s >= best - 1e-4]
        if item_id in tied:
            return True
        if len(tied) < k or len(found) < k or k >= MAX_TIED:
            return False
        k *= 4


MAX_TIED = 4096  # identical rows a probe looks through for itself


def verify(index_dir: Path, catalog: Catalog, *, probes: int = 20, seed: int = 0) -> VerifyReport:
    report = VerifyReport()
    loaded = index_store(index_dir).load(verify=True)  # raises on missing/corrupt files
    manifest = loaded.manifest
    binding = catalog.binding()
    if binding is None or binding.model_fingerprint != manifest.model_fingerprint:
        report.fail("index and catalog were built with different models")
    stored = index_ids(loaded.index)
    chunks = [ids for ids, _ in catalog.vectors(upto_id=manifest.catalog_high_water)]
    active = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    report.facts = {
        "version": manifest.version,
        "index_count": int(stored.size),
        "catalog_active": int(active.size),
        "catalog_high_water": manifest.catalog_high_water,
        "catalog_rows_after_index": catalog.high_water() - manifest.catalog_high_water,
    }
    if np.unique(stored).size != stored.size:
        report.fail("the index holds duplicate ids")
    missing = np.setdiff1d(active, stored)
    extra = np.setdiff1d(stored, active)
    if missing.size:
        report.fail(f"{missing.size} active catalog rows are not in the index")
    if extra.size:
        report.fail(f"{extra.size} index ids are not active catalog rows")
    rng = np.random.default_rng(seed)
    sample = rng.choice(active, size=min(probes, active.size), replace=False)
    embeddings = catalog.embeddings(int(i) for i in sample)
    misses = 0
    for item_id, vector in embeddings.items():
        if not _finds_itself(loaded.index, item_id, vector):
            misses += 1
    report.facts["probes"] = len(embeddings)
    report.facts["probe_misses"] = misses
    if misses:
        report.fail(f"{misses} of {len(embeddings)} probe queries did not find their own row")
    _verify_series(report, loaded, catalog)
    return report


def _verify_series(report: VerifyReport, loaded: LoadedIndex, catalog: Catalog) -> None:
    published = loaded.manifest.series
    if published is None or loaded.series is None:
        report.fail("the index has no series index: run `medsearch index rebuild`")
        return
    active, vectors, pending = series_rows_at(catalog, published.revision)
    stored = index_ids(loaded.series)
    report.facts["series_count"] = int(stored.size)
    report.facts["series_active"] = int(active.size)
    if np.unique(stored).size != stored.size:
        report.fail("the series index holds duplicate ids")
    extra = np.setdiff1d(np.setdiff1d(stored, active), pending)  # pending: changed since
    if np.setdiff1d(active, stored).size or extra.size:
        report.fail("the series index does not hold the catalog's active series")
    misses = 0
    for series_id, vector in zip(active, vectors, strict=True):
        scores, ids = search(loaded.series, vector.reshape(1, -1), 5)
        top = [int(i) for s, i in zip(scores[0], ids[0], strict=True) if s >= scores[0][0] - 1e-4]
        misses += int(series_id) not in top
    if misses:
        report.fail(f"{misses} of {active.size} series did not find themselves first")
