"""The labelled items of a catalog: their embeddings, labels and study/patient groups.

A label is a sidecar CSV column (``index build --metadata labels.csv``) or, when no item
has a sidecar column of that name, one of the DICOM attributes in
:data:`LABEL_ATTRIBUTES`. An item whose value is missing or empty has no label: it is
neither a query nor a candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from indexer.errors import MedsearchError
from indexer.store.catalog import Catalog
from indexer.store.records import ItemRecord

LabelSource = Literal["sidecar", "attribute"]

# DICOM attributes of a catalog row that make sense as class labels.
LABEL_ATTRIBUTES = (
    "modality",
    "body_part_examined",
    "view_position",
    "laterality",
    "manufacturer",
    "series_description",
    "sop_class_uid",
    "photometric_interpretation",
)

_ITEMS_CHUNK = 10_000  # ids per catalog.items() query (below SQLite's variable limit)


@dataclass(frozen=True)
class LabelledSet:
    """Row ``i`` of every array is one labelled item (catalog id ``ids[i]``)."""

    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32]  # (n, dim), L2-normalised by the encoder
    labels: list[str]
    studies: list[str | None]
    patients: list[str | None]
    source: LabelSource
    unlabelled: int  # active items without a value for the label

    def __len__(self) -> int:
        return len(self.labels)


def load_labelled(catalog: Catalog, column: str) -> LabelledSet:
    """Every active item of ``catalog`` with a non-empty value for ``column``."""
    ids: list[npt.NDArray[np.int64]] = []
    vectors: list[npt.NDArray[np.float32]] = []
    records: list[ItemRecord] = []
    for chunk_ids, chunk_vectors in catalog.vectors():
        ids.append(chunk_ids)
        vectors.append(chunk_vectors)
        for start in range(0, len(chunk_ids), _ITEMS_CHUNK):
            part = [int(i) for i in chunk_ids[start : start + _ITEMS_CHUNK]]
            found = catalog.items(part)
            records.extend(found[i] for i in part)
    if not records:
        raise MedsearchError("this index has no items to evaluate")
    source = _label_source(records, column)
    values = [_value(record, column, source) for record in records]
    keep = np.fromiter((bool(v) for v in values), dtype=bool, count=len(values))
    if not keep.any():
        raise MedsearchError(f"no item has a value for {column!r}")
    kept = [r for r, k in zip(records, keep, strict=True) if k]
    return LabelledSet(
        ids=np.concatenate(ids)[keep],
        vectors=np.ascontiguousarray(np.concatenate(vectors)[keep]),
        labels=[v for v in values if v],
        studies=[r.study_instance_uid for r in kept],
        patients=[r.patient_key for r in kept],
        source=source,
        unlabelled=int((~keep).sum()),
    )


def group_codes(keys: Sequence[str | None]) -> npt.NDArray[np.int64]:
    """An integer per distinct key; ``-1`` for ``None`` (an item in no group)."""
    codes: dict[str, int] = {}
    return np.fromiter(
        (-1 if key is None else codes.setdefault(key, len(codes)) for key in keys),
        dtype=np.int64,
        count=len(keys),
    )


def _label_source(records: Sequence[ItemRecord], column: str) -> LabelSource:
    if any(r.labels and column in r.labels for r in records):
        return "sidecar"
    if column in LABEL_ATTRIBUTES:
        return "attribute"
    columns = sorted({name for r in records for name in (r.labels or {})})
    known = ", ".join(columns) if columns else "none"
    raise MedsearchError(
        f"no sidecar column or DICOM attribute {column!r}: sidecar columns here: {known}; "
        f"attributes: {', '.join(LABEL_ATTRIBUTES)}"
    )


def _value(record: ItemRecord, column: str, source: LabelSource) -> str:
    if source == "sidecar":
        return (record.labels or {}).get(column, "").strip()
    value = getattr(record, column)
    return "" if value is None else str(value).strip()
