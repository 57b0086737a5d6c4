"""Series vectors: one vector per DICOM series, pooled from its instances' embeddings.

A radiologist asks for "series like this one"; the catalog answers with a vector per series
(``series`` table), searched in an index of its own that is published in the same version
as the instance index (see :mod:`indexer.store.sync`).

Pooling (``mean``): the mean of the series' L2-normalised item embeddings (every indexed
instance, every frame of a multi-frame object), renormalised. A single-instance series is
its instance. The series table is refreshed from the items before each publish: a series
whose active members changed (their count or the sum of their ids: ids only grow, so any
change of membership changes one of them) is pooled again; a series with no active
member left becomes a tombstone. Each change takes the next ``revision``; a published
series index records the revision it holds, so the next update applies exactly the rows
changed since (also after a crash between the refresh and the publish). Items without a
Series Instance UID (PNG, JPEG) have no series.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select, update

from indexer.store.catalog import Catalog
from indexer.store.models import ItemRow, SeriesRow

logger = logging.getLogger(__name__)

POOLING = "mean"
CHUNK_MEMBERS = 20_000  # item embeddings read per chunk while pooling (80 MB at 1024-d)
Vectors = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]


def pool(vectors: Vectors) -> npt.NDArray[np.float32]:
    """Mean of the L2-normalised rows of ``vectors``, renormalised."""
    rows = np.asarray(vectors, dtype=np.float32)
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    mean: npt.NDArray[np.float32] = rows.mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class SeriesRecord:
    """A series as search results show it (the ORM row stays in the store)."""

    id: int
    series_instance_uid: str
    study_instance_uid: str | None
    modality: str | None
    series_description: str | None
    body_part_examined: str | None
    members: int
    pooling: str

    @classmethod
    def from_row(cls, row: SeriesRow) -> SeriesRecord:
        return cls(
            row.id,
            row.series_instance_uid,
            row.study_instance_uid,
            row.modality,
            row.series_description,
            row.body_part_examined,
            row.members,
            row.pooling,
        )


@dataclass
class SeriesChanges:
    """What a refresh changed: series pooled again (ids and vectors) and series deleted."""

    updated_ids: Ids
    updated_vectors: Vectors
    removed_ids: Ids
    revision: int  # the newest revision these changes include

    @property
    def empty(self) -> bool:
        return not len(self.updated_ids) and not len(self.removed_ids)


def _active_signatures(catalog: Catalog) -> dict[str, tuple[int, int]]:
    query = (
        select(ItemRow.series_instance_uid, func.count(ItemRow.id), func.sum(ItemRow.id))
        .where(ItemRow.status == "active", ItemRow.series_instance_uid.is_not(None))
        .group_by(ItemRow.series_instance_uid)
    )
    with catalog.session() as s:
        return {str(uid): (int(n), int(total)) for uid, n, total in s.execute(query)}


def _chunks(uids: Sequence[str], sizes: dict[str, tuple[int, int]]) -> Iterator[list[str]]:
    chunk: list[str] = []
    members = 0
    for uid in uids:
        chunk.append(uid)
        members += sizes[uid][0]
        if members >= CHUNK_MEMBERS or len(chunk) >= 500:
            yield chunk
            chunk, members = [], 0
    if chunk:
        yield chunk


def _pool_chunk(catalog: Catalog, uids: list[str], dim: int, revision: int) -> None:
    """Pool the series ``uids`` from their active items and upsert their rows."""
    query = select(
        ItemRow.series_instance_uid,
        ItemRow.id,
        ItemRow.embedding,
        ItemRow.study_instance_uid,
        ItemRow.modality,
        ItemRow.series_description,
        ItemRow.body_part_examined,
    ).where(
        ItemRow.status == "active", ItemRow.series_instance_uid.in_(uids)
    )  # no ORDER BY: it would make SQLite scan ix_items_status_id; sorted below
    with catalog.session() as s, s.begin():
        members: dict[str, list[tuple[int, bytes]]] = {}
        first: dict[str, tuple[str | None, str | None, str | None, str | None]] = {}
        for uid, item_id, blob, study, modality, description, body_part in sorted(
            s.execute(query), key=lambda row: int(row[1])
        ):
            members.setdefault(str(uid), []).append((int(item_id), blob))
            first.setdefault(str(uid), (study, modality, description, body_part))
        rows = {
            row.series_instance_uid: row
            for row in s.scalars(select(SeriesRow).where(SeriesRow.series_instance_uid.in_(uids)))
        }
        for uid, found in members.items():
            matrix = np.stack([np.frombuffer(blob, dtype="<f4") for _, blob in found])
            if matrix.shape[1] != dim:
                raise ValueError(f"series {uid[:24]}: embeddings of dimension {matrix.shape[1]}")
            row = rows.get(uid)
            if row is None:
                row = SeriesRow(series_instance_uid=uid)
                s.add(row)
            study, modality, description, body_part = first[uid]
            row.study_instance_uid, row.modality = study, modality
            row.series_description, row.body_part_examined = description, body_part
            row.members, row.member_id_sum = len(found), sum(i for i, _ in found)
            row.pooling, row.embedding = POOLING, pool(matrix).astype("<f4").tobytes()
            row.status, row.revision = "active", revision


def refresh_series(catalog: Catalog, dim: int) -> int:
    """Bring the series table in step with the active items; returns the series changed."""
    active = _active_signatures(catalog)
    with catalog.session() as s:
        stored = {
            str(uid): (int(n), int(total), str(pooling), str(status))
            for uid, n, total, pooling, status in s.execute(
                select(
                    SeriesRow.series_instance_uid,
                    SeriesRow.members,
                    SeriesRow.member_id_sum,
                    SeriesRow.pooling,
                    SeriesRow.status,
                )
            )
        }
        revision = int(s.scalar(select(func.max(SeriesRow.revision))) or 0) + 1
    stale = sorted(
        uid
        for uid, signature in active.items()
        if uid not in stored
        or stored[uid][:2] != signature
        or stored[uid][2:] != (POOLING, "active")
    )
    gone = sorted(uid for uid, row in stored.items() if uid not in active and row[3] == "active")
    for chunk in _chunks(stale, active):
        _pool_chunk(catalog, chunk, dim, revision)
    if gone:
        with catalog.session() as s, s.begin():
            for start in range(0, len(gone), 500):
                s.execute(
                    update(SeriesRow)
                    .where(SeriesRow.series_instance_uid.in_(gone[start : start + 500]))
                    .values(status="removed", members=0, member_id_sum=0, revision=revision)
                )
    if stale or gone:
        logger.info("series: %d pooled, %d removed", len(stale), len(gone))
    return len(stale) + len(gone)


def series_changes(catalog: Catalog, dim: int, since: int) -> SeriesChanges:
    """Series changed after revision ``since``: active ones with their vectors, removed."""
    query = select(SeriesRow.id, SeriesRow.status, SeriesRow.embedding, SeriesRow.revision).where(
        SeriesRow.revision > since
    )
    with catalog.session() as s:
        rows = s.execute(query.order_by(SeriesRow.id)).all()
    updated = [(int(i), blob) for i, status, blob, _ in rows if status == "active"]
    removed = [int(i) for i, status, _, _ in rows if status != "active"]
    return SeriesChanges(
        np.asarray([i for i, _ in updated], dtype=np.int64),
        np.stack([np.frombuffer(b, dtype="<f4") for _, b in updated]).astype(np.float32)
        if updated
        else np.zeros((0, dim), np.float32),
        np.asarray(removed, dtype=np.int64),
        max([since, *(int(r[3]) for r in rows)]),
    )


def series_rows_at(catalog: Catalog, revision: int) -> tuple[Ids, Vectors, Ids]:
    """Ids and vectors of the series active as of ``revision`` (unchanged since), and the
    ids of the series changed after it."""
    query = select(SeriesRow.id, SeriesRow.embedding, SeriesRow.status, SeriesRow.revision)
    with catalog.session() as s:
        rows = s.execute(query.order_by(SeriesRow.id)).all()
    kept = [(int(i), b) for i, b, status, rev in rows if rev <= revision and status == "active"]
    pending = np.asarray([int(r[0]) for r in rows if r[3] > revision], dtype=np.int64)
    ids = np.asarray([i for i, _ in kept], dtype=np.int64)
    if not kept:
        return ids, np.zeros((0, 0), np.float32), pending
    vectors = np.stack([np.frombuffer(b, dtype="<f4") for _, b in kept]).astype(np.float32)
    return ids, vectors, pending


def series_revision(catalog: Catalog) -> int:
    with catalog.session() as s:
        return int(s.scalar(select(func.max(SeriesRow.revision))) or 0)


def series_vectors(catalog: Catalog, dim: int) -> tuple[Ids, Vectors]:
    """Every active series' (id, vector), in id order."""
    query = select(SeriesRow.id, SeriesRow.embedding).where(SeriesRow.status == "active")
    with catalog.session() as s:
        rows = s.execute(query.order_by(SeriesRow.id)).all()
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    return ids, np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype(np.float32)


def series_records(catalog: Catalog, ids: Sequence[int]) -> dict[int, SeriesRecord]:
    with catalog.session() as s:
        rows = s.scalars(select(SeriesRow).where(SeriesRow.id.in_(list(ids)))).all()
        return {row.id: SeriesRecord.from_row(row) for row in rows}


def series_by_uid(catalog: Catalog, uids: Sequence[str]) -> dict[str, tuple[int, Vectors]]:
    """Series id and vector by Series Instance UID (those in the catalog)."""
    with catalog.session() as s:
        rows = s.execute(
            select(SeriesRow.series_instance_uid, SeriesRow.id, SeriesRow.embedding).where(
                SeriesRow.series_instance_uid.in_(list(uids)), SeriesRow.status == "active"
            )
        ).all()
    return {str(u): (int(i), np.frombuffer(b, dtype="<f4").astype(np.float32)) for u, i, b in rows}


def series_of_study(catalog: Catalog, study_uids: Sequence[str]) -> dict[str, list[int]]:
    """Series ids of each study."""
    with catalog.session() as s:
        rows = s.execute(
            select(SeriesRow.study_instance_uid, SeriesRow.id).where(
                SeriesRow.study_instance_uid.in_(list(study_uids)), SeriesRow.status == "active"
            )
        ).all()
    found: dict[str, list[int]] = {}
    for study, row_id in rows:
        found.setdefault(str(study), []).append(int(row_id))
    return found


def series_embeddings(catalog: Catalog, ids: Sequence[int]) -> dict[int, Vectors]:
    with catalog.session() as s:
        rows = s.execute(
            select(SeriesRow.id, SeriesRow.embedding).where(SeriesRow.id.in_(list(ids)))
        ).all()
    return {int(i): np.frombuffer(b, dtype="<f4").astype(np.float32) for i, b in rows}


def series_ids_of_items(catalog: Catalog, item_ids: Ids) -> Ids:
    """The series that the items ``item_ids`` belong to (for filters on series search)."""
    found: set[int] = set()
    wanted = [int(i) for i in item_ids]
    with catalog.session() as s:
        for start in range(0, len(wanted), 5000):
            part = wanted[start : start + 5000]
            found.update(
                int(i)
                for i in s.scalars(
                    select(SeriesRow.id)
                    .join(ItemRow, ItemRow.series_instance_uid == SeriesRow.series_instance_uid)
                    .where(ItemRow.id.in_(part), SeriesRow.status == "active")
                    .distinct()
                )
            )
    return np.asarray(sorted(found), dtype=np.int64)


def member_items(catalog: Catalog, series_uid: str) -> tuple[Ids, Vectors]:
    """The active items of a series and their embeddings, in id order."""
    query = (
        select(ItemRow.id, ItemRow.embedding)
        .where(ItemRow.status == "active", ItemRow.series_instance_uid == series_uid)
        .order_by(ItemRow.id)
    )
    with catalog.session() as s:
        rows = s.execute(query).all()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, np.zeros((0, 0), np.float32)
    return ids, np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype(np.float32)
