"""Catalog schema (SQLAlchemy 2). Alembic owns it: see ``migrations/``; never ``create_all``.

- ``catalog_info``: one row per catalog, the model and rendering it holds embeddings of,
  and the catalog's random id (recorded in each index manifest, so that an index is never
  served or updated with another catalog's rows). Mixing models is refused: every item
  must carry the catalog's fingerprint.
- ``items``: one row per indexed image (a file, or one frame of a multi-frame DICOM). The
  row id is the FAISS vector id. ``identity`` is ``dicom:<SOP Instance UID>:<frame>`` or
  ``sha256:<content hash>`` for other files; unique per model fingerprint and recipe.
  The embedding (float32, L2-normalised) is stored with the row, in the same transaction.
  Removal is a tombstone (``status = 'removed'``) so that the index update removes the id.
- ``failures``: files that were not indexed, one row per source URI, with their reason
  (no PHI: fixed phrases) and how many runs tried them (``attempts``): transient reasons
  are retried by later runs (see :mod:`indexer.store.retries`).
- ``runs``: who ran what, when, and the counts.
- ``sync_cursors``: how far ``index watch`` has followed each PACS (an Orthanc change
  sequence number, or a QIDO-RS date), committed after the items it covers.
- ``series``: one row per DICOM series: its vector pooled from its active instances'
  embeddings (see :mod:`indexer.store.series`); the row id is the series index's vector
  id. ``members`` and ``member_id_sum`` say which items it was pooled from (ids only grow,
  so a changed membership changes one of them). A series with no active item left is a
  tombstone (``status = 'removed'``). ``revision`` grows with every change, so that a
  series index update takes exactly the rows changed since the version it starts from.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_catalog_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class CatalogInfo(Base):
    __tablename__ = "catalog_info"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    embedding_dim: Mapped[int] = mapped_column(Integer)
    recipe: Mapped[str] = mapped_column(String(32))
    render_policy: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # nullable only for rows that predate revision 0002, which fills them in
    catalog_id: Mapped[str | None] = mapped_column(String(32), default=new_catalog_id)
    series_sample: Mapped[int | None] = mapped_column(Integer)  # slices per series, None: all
    # check value of the patient-hash salt ("" none; None: not recorded yet), revision 0007
    patient_salt: Mapped[str | None] = mapped_column(String(32))


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    command: Mapped[str] = mapped_column(String(32))  # build, add, remove, rebuild
    sources: Mapped[list[str]] = mapped_column(JSON, default=list)
    user: Mapped[str] = mapped_column(String(64), default="")
    host: Mapped[str] = mapped_column(String(128), default="")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running, done, failed
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ItemRow(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("identity", "model_fingerprint", "recipe", name="uq_items_identity"),
        Index("ix_items_status_id", "status", "id"),
        Index("ix_items_study", "study_instance_uid"),
        Index("ix_items_series", "series_instance_uid"),
        # a series' active members (series vectors, best slices): without statistics,
        # SQLite would otherwise scan ix_items_status_id for every series
        Index("ix_items_series_status", "series_instance_uid", "status"),
        Index("ix_items_modality", "modality"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identity: Mapped[str] = mapped_column(String(200))
    source_uri: Mapped[str] = mapped_column(Text, index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    frame: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    laterality: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[dt.date | None] = mapped_column(Date)
    series_description: Mapped[str | None] = mapped_column(String(64))
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    photometric_interpretation: Mapped[str | None] = mapped_column(String(16))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    bits_stored: Mapped[int | None] = mapped_column(Integer)
    burned_in_annotation: Mapped[bool | None] = mapped_column(Boolean)
    patient_key: Mapped[str | None] = mapped_column(String(64), index=True)
    phi: Mapped[dict[str, str] | None] = mapped_column(JSON)
    labels: Mapped[dict[str, str] | None] = mapped_column(JSON)  # sidecar CSV columns
    voi: Mapped[str | None] = mapped_column(String(24))
    phash: Mapped[str | None] = mapped_column(String(16))  # perceptual hash, 64 bits in hex
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little endian
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    recipe: Mapped[str] = mapped_column(String(32))
    render_policy: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active, removed
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Failure(Base):
    __tablename__ = "failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_uri: Mapped[str] = mapped_column(Text, index=True)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(String(300), default="")
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))


class SeriesRow(Base):
    __tablename__ = "series"
    __table_args__ = (Index("ix_series_study", "study_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    series_description: Mapped[str | None] = mapped_column(String(64))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    members: Mapped[int] = mapped_column(Integer)  # active items pooled (instances, frames)
    member_id_sum: Mapped[int] = mapped_column(BigInteger)
    pooling: Mapped[str] = mapped_column(String(16))
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32, L2-normalised
    status: Mapped[str] = mapped_column(String(16), default="active")  # active, removed
    revision: Mapped[int] = mapped_column(Integer, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class SyncCursor(Base):
    __tablename__ = "sync_cursors"

    source: Mapped[str] = mapped_column(String(500), primary_key=True)
    cursor: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
