"""Metadata filters of a search, turned into catalog row ids for a FAISS id selector."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy import Select, select

from indexer.store.models import ItemRow

MAX_VALUES = 100  # values per filter field
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_date(value: object) -> dt.date:
    """A ``date``, or a string ``YYYY-MM-DD``; not a timestamp, a datetime or a number."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and ISO_DATE.fullmatch(value):
        return dt.date.fromisoformat(value)  # a ValueError for 2024-02-30
    raise ValueError("expected a date as YYYY-MM-DD")


IsoDate = Annotated[dt.date, BeforeValidator(_iso_date)]


class Filters(BaseModel):
    """All given fields must match (AND); a list matches any of its values (OR)."""

    model_config = ConfigDict(extra="forbid")

    modality: list[str] | None = Field(default=None, max_length=MAX_VALUES)
    body_part_examined: list[str] | None = Field(default=None, max_length=MAX_VALUES)
    view_position: list[str] | None = Field(default=None, max_length=MAX_VALUES)
    laterality: list[str] | None = Field(default=None, max_length=MAX_VALUES)
    study_date_from: IsoDate | None = None
    study_date_to: IsoDate | None = None
    study_instance_uid: list[str] | None = Field(default=None, max_length=MAX_VALUES)
    series_instance_uid: list[str] | None = Field(default=None, max_length=MAX_VALUES)
    source_prefix: str | None = Field(default=None, max_length=1000)
    labels: dict[str, str] | None = Field(default=None, max_length=20)  # sidecar CSV columns
    exclude_study_instance_uid: list[str] | None = Field(default=None, max_length=MAX_VALUES)
    exclude_patient_key: list[str] | None = Field(default=None, max_length=MAX_VALUES)

    def is_empty(self) -> bool:
        return not any(v is not None for v in self.model_dump().values())


def label_pairs(values: Iterable[str] | None) -> dict[str, str] | None:
    """``COLUMN=VALUE`` strings (a CLI option, a query parameter) as the ``labels`` filter;
    a ``ValueError`` names one that is malformed, or a column given two values (all label
    filters must match: such a filter could match nothing)."""
    found: dict[str, str] = {}
    for pair in values or ():
        column, sep, value = pair.partition("=")
        if not sep or not column:
            raise ValueError(f"a label filter is COLUMN=VALUE, not {pair!r}")
        if found.get(column, value) != value:
            raise ValueError(f"label {column!r} given twice with different values")
        found[column] = value
    return found or None


def filter_query(filters: Filters) -> Select[Any]:
    """``SELECT id FROM items WHERE status = 'active' AND <filters>``."""
    query = select(ItemRow.id).where(ItemRow.status == "active")
    for name in ("modality", "body_part_examined", "view_position", "laterality"):
        values = getattr(filters, name)
        if values:
            query = query.where(getattr(ItemRow, name).in_(values))
    if filters.study_instance_uid:
        query = query.where(ItemRow.study_instance_uid.in_(filters.study_instance_uid))
    if filters.series_instance_uid:
        query = query.where(ItemRow.series_instance_uid.in_(filters.series_instance_uid))
    if filters.study_date_from:
        query = query.where(ItemRow.study_date >= filters.study_date_from)
    if filters.study_date_to:
        query = query.where(ItemRow.study_date <= filters.study_date_to)
    if filters.source_prefix:
        prefix = filters.source_prefix
        query = query.where(ItemRow.source_uri.startswith(prefix, autoescape=True))
    if filters.labels:
        for column, value in filters.labels.items():
            query = query.where(ItemRow.labels[column].as_string() == value)
    if filters.exclude_study_instance_uid:
        excluded = filters.exclude_study_instance_uid
        query = query.where(
            (ItemRow.study_instance_uid.is_(None)) | (ItemRow.study_instance_uid.not_in(excluded))
        )
    if filters.exclude_patient_key:
        excluded = filters.exclude_patient_key
        query = query.where(
            (ItemRow.patient_key.is_(None)) | (ItemRow.patient_key.not_in(excluded))
        )
    return query.order_by(ItemRow.id)
