"""What the store hands out about an indexed item: a plain, immutable record.

ORM rows (:class:`indexer.store.models.ItemRow`) never leave the store, so a caller (the
service, the CLI) cannot touch a detached session or lazy-load by accident, and the
schema can change behind this record.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ItemRecord:
    """An item's catalog facts (its embedding is read apart: ``Catalog.embeddings``)."""

    id: int
    identity: str
    source_uri: str
    sha256: str
    size: int
    format: str
    width: int
    height: int
    status: str
    model_fingerprint: str
    recipe: str
    render_policy: str
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None
    study_instance_uid: str | None = None
    sop_class_uid: str | None = None
    frame: int | None = None
    number_of_frames: int | None = None
    modality: str | None = None
    body_part_examined: str | None = None
    view_position: str | None = None
    laterality: str | None = None
    study_date: dt.date | None = None
    series_description: str | None = None
    manufacturer: str | None = None
    photometric_interpretation: str | None = None
    transfer_syntax_uid: str | None = None
    bits_stored: int | None = None
    burned_in_annotation: bool | None = None
    patient_key: str | None = None
    phi: dict[str, str] | None = None
    labels: dict[str, str] | None = None
    voi: str | None = None
    phash: str | None = None
    run_id: int | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> ItemRecord:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})
