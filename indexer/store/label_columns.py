"""Computed label columns: a label per active item, written into its ``labels`` JSON.

``labels`` holds the sidecar CSV's columns (strings); a computed column is stored the same
way, so the search filters (``filters.labels``) select on it like on a sidecar column. A
column ``NAME`` holds the item's top label and ``NAME_probability`` its probability as a
decimal string (``"0.873"``); other keys are kept. Items are read and written in batches,
one transaction each; a rerun overwrites both keys.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from sqlalchemy import select, update

from indexer.store.catalog import Catalog
from indexer.store.models import ItemRow, utcnow

COLUMN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
PROBABILITY_SUFFIX = "_probability"

#: Label probabilities ``(items, labels)`` of a batch of embeddings ``(items, dim)``.
Classifier = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float64]]


def check_column_name(name: str) -> str:
    if not COLUMN_NAME.fullmatch(name):
        raise ValueError(
            "a label column name is a letter, then letters, digits or '_' (48 at most)"
        )
    return name


def write_label_column(
    catalog: Catalog,
    name: str,
    labels: Sequence[str],
    classify: Classifier,
    *,
    batch: int = 1000,
) -> Counter[str]:
    """Label every active item with its most probable of ``labels``; the count per label."""
    check_column_name(name)
    counts: Counter[str] = Counter({label: 0 for label in labels})
    last = 0
    while True:
        with catalog.session() as s, s.begin():
            rows = s.execute(
                select(ItemRow.id, ItemRow.embedding, ItemRow.labels)
                .where(ItemRow.status == "active", ItemRow.id > last)
                .order_by(ItemRow.id)
                .limit(batch)
            ).all()
            if not rows:
                return counts
            vectors = np.stack([np.frombuffer(r.embedding, dtype="<f4") for r in rows])
            probs = classify(vectors.astype(np.float32))
            best = probs.argmax(axis=1)
            now = utcnow()
            changes = []
            for row, choice, row_probs in zip(rows, best, probs, strict=True):
                label = labels[int(choice)]
                counts[label] += 1
                values = {
                    **(row.labels or {}),
                    name: label,
                    name + PROBABILITY_SUFFIX: f"{float(row_probs[choice]):.3f}",
                }
                changes.append({"id": row.id, "labels": values, "updated_at": now})
            s.execute(update(ItemRow), changes)  # an UPDATE by primary key per row
            last = int(rows[-1].id)
