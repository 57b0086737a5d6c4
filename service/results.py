"""Search hits to response models: metadata, thumbnail URL, grouping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from indexer.store.records import ItemRecord
from indexer.store.searcher import Hit as SearchHit
from service.schemas import GroupBy, Hit, Item, ItemMetadata


def item_model(row: ItemRecord) -> Item:
    return Item(
        id=row.id,
        source_uri=row.source_uri,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        sop_instance_uid=row.sop_instance_uid,
        frame=row.frame,
        metadata=ItemMetadata(
            format=row.format,
            width=row.width,
            height=row.height,
            modality=row.modality,
            body_part_examined=row.body_part_examined,
            view_position=row.view_position,
            laterality=row.laterality,
            study_date=row.study_date,
            series_description=row.series_description,
            manufacturer=row.manufacturer,
            photometric_interpretation=row.photometric_interpretation,
            number_of_frames=row.number_of_frames,
            burned_in_annotation=row.burned_in_annotation,
            labels=row.labels,
        ),
        thumbnail_url=f"/v1/items/{row.id}/thumbnail",
    )


@dataclass(frozen=True)
class Links:
    """Where a result can be opened: a viewer URL template and a DICOMweb base URL."""

    viewer_template: str | None = None
    wado_base: str | None = None

    def of(self, row: ItemRecord) -> dict[str, str | None]:
        return self.for_uids(row.study_instance_uid, row.series_instance_uid, row.sop_instance_uid)

    def for_uids(
        self, study: str | None, series: str | None, sop: str | None
    ) -> dict[str, str | None]:
        """The viewer at ``study`` (and ``series``, ``sop`` where the template asks); WADO-RS
        of the instance, or of the series when no ``sop`` is given."""
        viewer = wado = None
        if self.viewer_template and study:
            viewer = self.viewer_template.format(
                study_uid=study, series_uid=series or "", sop_uid=sop or ""
            )
        if self.wado_base and study and series:
            wado = f"{self.wado_base.rstrip('/')}/studies/{study}/series/{series}"
            wado += f"/instances/{sop}" if sop else ""
        return {"viewer_url": viewer, "wado_url": wado}


def best_of_groups(hits: Sequence[SearchHit], group_by: GroupBy | None) -> list[SearchHit]:
    """``hits`` ordered by score then id; with ``group_by``, only the best hit of each
    study or series (an item without the UID is a group of its own)."""
    ordered = sorted(hits, key=lambda h: (-h.score, h.id))
    if group_by is None:
        return ordered
    seen: set[str] = set()
    kept = []
    for hit in ordered:
        uid = (
            hit.item.study_instance_uid if group_by == "study" else hit.item.series_instance_uid
        ) or f"item:{hit.id}"
        if uid not in seen:
            seen.add(uid)
            kept.append(hit)
    return kept


def hits_model(hits: Sequence[SearchHit], links: Links | None = None) -> list[Hit]:
    """The API's result objects of ``hits``, in their order."""
    links = links or Links()
    return [
        Hit(score=round(h.score, 6), **item_model(h.item).model_dump(), **links.of(h.item))
        for h in hits
    ]
