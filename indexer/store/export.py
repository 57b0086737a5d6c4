"""The catalog as a table: metadata and source URIs of the active items, for pandas.

Rows come in id order, read ``batch`` at a time by id (keyset paging: memory stays flat
on any catalog). Label columns (sidecar CSV columns, zero-shot labels) become one column
each, ``label:<name>``, found by a first pass over the matching rows' labels. Stored PHI
(``MEDSEARCH_PHI_ALLOW``) is never exported; ``patient_key`` (a salted hash) is.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

from indexer.store.catalog import Catalog
from indexer.store.filters import Filters, filter_query
from indexer.store.models import ItemRow

COLUMNS = (
    "id", "source_uri", "study_instance_uid", "series_instance_uid", "sop_instance_uid",
    "frame", "number_of_frames", "modality", "body_part_examined", "view_position",
    "laterality", "study_date", "series_description", "manufacturer", "format", "width",
    "height", "patient_key", "sha256",
)  # fmt: skip
LABEL_PREFIX = "label:"


def _matching(filters: Filters, after_id: int, limit: int) -> Any:
    ids = filter_query(filters).where(ItemRow.id > after_id).limit(limit).subquery()
    return select(ItemRow).join(ids, ItemRow.id == ids.c.id).order_by(ItemRow.id)


def label_names(catalog: Catalog, filters: Filters, *, batch: int = 5000) -> list[str]:
    """Every label column name among the matching items, sorted."""
    names: set[str] = set()
    last = 0
    while True:
        query = filter_query(filters).where(ItemRow.id > last).limit(batch).subquery()
        with catalog.session() as s:
            rows = s.execute(
                select(ItemRow.id, ItemRow.labels)
                .join(query, ItemRow.id == query.c.id)
                .order_by(ItemRow.id)
            ).all()
        if not rows:
            return sorted(names)
        for _, labels in rows:
            names.update(labels or {})
        last = int(rows[-1][0])


def export_rows(
    catalog: Catalog,
    filters: Filters,
    labels: list[str],
    *,
    after_id: int = 0,
    limit: int | None = None,
    batch: int = 1000,
) -> Iterator[dict[str, Any]]:
    """The matching active items after ``after_id``, at most ``limit``, in id order."""
    last, left = after_id, limit
    while left is None or left > 0:
        size = batch if left is None else min(batch, left)
        with catalog.session() as s:
            rows = s.scalars(_matching(filters, last, size)).all()
            records = [
                {
                    **{c: getattr(r, c) for c in COLUMNS},
                    **{LABEL_PREFIX + n: (r.labels or {}).get(n) for n in labels},
                }
                for r in rows
            ]
        if not records:
            return
        yield from records
        last = int(records[-1]["id"])
        if left is not None:
            left -= len(records)


def csv_lines(header: list[str], rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """CSV text, a header line then one line per row (empty cells for None)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    yield buffer.getvalue()
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
        yield buffer.getvalue()
