"""Near-duplicate groups: the same image as another file (a PNG export, a re-encoded or
resized copy, a re-sent series), apart from images that are merely similar.

The tiers: the same bytes (``sha256``, refused at build time as a duplicate source), the
same image (a SOP Instance UID already indexed: ``duplicate``), **near-duplicate pixels**
(perceptual hashes at most ``NEAR_DUPLICATE_BITS`` apart, see
:mod:`indexer.imaging.phash`), and similar (embeddings, cosine at least a threshold).

Pairs within the threshold are joined into groups closest first; two distinct instances
of one DICOM series (the same Series Instance UID, different SOP Instance UIDs) are never
put in one group, directly or through a copy: neighbouring slices can hash alike, but a
series is one acquisition, not copies. Exact search: FAISS binary (Hamming) or inner
product range search over every active item, O(n^2) in blocks: a curation job.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
from sqlalchemy import select

from indexer.imaging.phash import NEAR_DUPLICATE_BITS, bits_apart
from indexer.store.catalog import Catalog
from indexer.store.models import ItemRow

By = Literal["phash", "embedding"]
DEFAULT_COSINE = 0.98  # --by embedding: a looser notion ("almost the same picture")
BLOCK = 4096


@dataclass(frozen=True)
class Member:
    id: int
    source_uri: str
    distance: float  # to the group's first member: bits (phash) or 1 - cosine


@dataclass(frozen=True)
class Group:
    members: list[Member]


@dataclass(frozen=True)
class _Row:
    id: int
    source_uri: str
    series: str | None
    sop: str | None
    phash: str | None


def _rows(catalog: Catalog) -> list[_Row]:
    query = select(
        ItemRow.id,
        ItemRow.source_uri,
        ItemRow.series_instance_uid,
        ItemRow.sop_instance_uid,
        ItemRow.phash,
    ).where(ItemRow.status == "active")
    with catalog.session() as s:
        return [_Row(*row) for row in s.execute(query.order_by(ItemRow.id))]


def _phash_pairs(rows: Sequence[_Row], bits: int) -> Iterator[tuple[float, int, int]]:
    hashed = [i for i, r in enumerate(rows) if r.phash]
    if len(hashed) < 2:
        return
    codes = np.stack(
        [np.frombuffer(bytes.fromhex(str(rows[i].phash)), dtype=np.uint8) for i in hashed]
    )
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    for start in range(0, len(hashed), BLOCK):
        lims, distances, found = index.range_search(codes[start : start + BLOCK], bits + 1)
        for q in range(len(lims) - 1):
            a = hashed[start + q]
            span = slice(lims[q], lims[q + 1])
            for d, j in zip(distances[span], found[span], strict=True):
                b = hashed[int(j)]
                if a < b:
                    yield float(d), a, b


def _embedding_pairs(
    catalog: Catalog, rows: Sequence[_Row], cosine: float
) -> Iterator[tuple[float, int, int]]:
    position = {r.id: i for i, r in enumerate(rows)}
    ids, vectors = [], []
    for chunk_ids, chunk_vectors in catalog.vectors():
        ids.append(chunk_ids)
        vectors.append(chunk_vectors)
    if not ids:
        return
    all_ids, matrix = np.concatenate(ids), np.concatenate(vectors)
    index = faiss.IndexFlatIP(matrix.shape[1])
    index.add(matrix)
    for start in range(0, len(all_ids), BLOCK):
        lims, scores, found = index.range_search(matrix[start : start + BLOCK], cosine)
        for q in range(len(lims) - 1):
            a = position[int(all_ids[start + q])]
            span = slice(lims[q], lims[q + 1])
            for s, j in zip(scores[span], found[span], strict=True):
                b = position[int(all_ids[int(j)])]
                if a < b:
                    yield 1.0 - float(s), a, b


def near_duplicate_groups(
    catalog: Catalog, *, by: By = "phash", threshold: float | None = None
) -> list[Group]:
    """Groups of two or more near-duplicates, largest first (then by first id)."""
    rows = _rows(catalog)
    if by == "phash":
        bits = int(NEAR_DUPLICATE_BITS if threshold is None else threshold)
        pairs = list(_phash_pairs(rows, bits))
    else:
        cosine = DEFAULT_COSINE if threshold is None else float(threshold)
        pairs = list(_embedding_pairs(catalog, rows, cosine))
    parent = list(range(len(rows)))
    sops: dict[int, dict[str, set[str]]] = {}  # root -> series -> SOP UIDs in the group

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def series_of(i: int) -> dict[str, set[str]]:
        r = rows[i]
        return {r.series: {r.sop or ""}} if r.series else {}

    for _, a, b in sorted(pairs):  # closest first
        ra, rb = root(a), root(b)
        if ra == rb:
            continue
        left, right = sops.get(ra, series_of(ra)), sops.get(rb, series_of(rb))
        if any(len(left[s] | right[s]) > 1 for s in left.keys() & right.keys()):
            continue  # would hold two instances of one series
        parent[rb] = ra
        merged = {s: left.get(s, set()) | right.get(s, set()) for s in left.keys() | right.keys()}
        sops[ra] = merged
    members: dict[int, list[int]] = {}
    for i in range(len(rows)):
        members.setdefault(root(i), []).append(i)
    groups = []
    for indices in members.values():
        if len(indices) < 2:
            continue
        first = rows[indices[0]]
        groups.append(
            Group(
                [
                    Member(rows[i].id, rows[i].source_uri, _distance(first, rows[i], by, catalog))
                    for i in indices
                ]
            )
        )
    return sorted(groups, key=lambda g: (-len(g.members), g.members[0].id))


def _distance(first: _Row, other: _Row, by: By, catalog: Catalog) -> float:
    if by == "phash":
        return float(bits_apart(first.phash or "0", other.phash or "0"))
    found = catalog.embeddings([first.id, other.id])
    return round(1.0 - float(found[first.id] @ found[other.id]), 6)


@dataclass
class _Kept:
    id: int
    phash: str | None
    series: str | None
    sop: str | None
    duplicates: int = 0

    def covers(self, phash: str | None, series: str | None, sop: str | None, bits: int) -> bool:
        if not phash or not self.phash:
            return False
        if series is not None and series == self.series and sop != self.sop:
            return False  # another instance of the same series: never a copy
        return bits_apart(phash, self.phash) <= bits


def collapse(
    hits: Sequence[tuple[int, str | None, str | None, str | None]],
    bits: int = NEAR_DUPLICATE_BITS,
) -> list[tuple[int, int]]:
    """Search results ``(id, phash, series, sop)``, best first, collapsed to one per group
    of near-duplicates among them: ``(id, duplicates)`` of each result kept."""
    kept: list[_Kept] = []
    for item_id, digest, series, sop in hits:
        twin = next((k for k in kept if k.covers(digest, series, sop, bits)), None)
        if twin is None:
            kept.append(_Kept(item_id, digest, series, sop))
        else:
            twin.duplicates += 1
    return [(k.id, k.duplicates) for k in kept]
