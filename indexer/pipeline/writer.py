"""Writer stage: decoded images and embeddings to catalog rows, one transaction per batch."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from indexer.imaging.types import DecodedImage
from indexer.pipeline.preparer import Prepared
from indexer.store.catalog import Catalog, NewFailure, NewItem

_NOT_COLUMNS = {"render_policy"}


def identity(image: DecodedImage, sha256: str) -> str:
    """``dicom:<SOP Instance UID>:<frame>``, else ``sha256:<hash>[:<frame>]``."""
    meta = image.metadata
    if meta.sop_instance_uid:
        return f"dicom:{meta.sop_instance_uid}:{meta.frame or 1}"
    suffix = f":{meta.frame}" if meta.frame and (meta.number_of_frames or 1) > 1 else ""
    return f"sha256:{sha256}{suffix}"


def rows_for(
    batch: Sequence[Prepared], embeddings: npt.NDArray[np.float32]
) -> tuple[list[NewItem], list[NewFailure]]:
    items: list[NewItem] = []
    failures: list[NewFailure] = []
    row = 0
    for read, result in ((p.read, p.result) for p in batch):
        if not result.ok:
            reason = result.reason.value if result.reason else "no image"
            failures.append(NewFailure(read.item.uri, reason, result.detail, result.file.sha256))
            continue
        for image in result.images:
            fields = image.metadata.model_dump(exclude=_NOT_COLUMNS)
            fields.update(sha256=result.file.sha256, size=result.file.size, labels=read.labels)
            items.append(
                NewItem(
                    identity(image, result.file.sha256),
                    read.item.uri,
                    embeddings[row],
                    fields,
                )
            )
            row += 1
    return items, failures


class Writer:
    """The one writer: a batch's items, embeddings and failures in one transaction."""

    def __init__(self, catalog: Catalog, run_id: int) -> None:
        self.catalog, self.run_id = catalog, run_id
        self.busy_s = 0.0

    def __call__(
        self, batch: Sequence[Prepared], embeddings: npt.NDArray[np.float32]
    ) -> tuple[int, int, int]:
        """Commit; returns (indexed, duplicates skipped, failed)."""
        started = time.perf_counter()
        items, failures = rows_for(batch, embeddings)
        ids = self.catalog.add_batch(self.run_id, items, failures)
        self.busy_s += time.perf_counter() - started
        return len(ids), len(items) - len(ids), len(failures)
