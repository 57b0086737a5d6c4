"""An indexed item's metadata and its thumbnail (rendered as the model saw it, under the
burned-in text policy: :mod:`service.thumbnails`); the catalog's items as CSV
(``GET /v1/items/export``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from indexer.errors import SourceError
from indexer.imaging.burned_in import ThumbnailPolicy
from indexer.sources import open_uri
from indexer.store.export import COLUMNS, LABEL_PREFIX, csv_lines, export_rows, label_names
from indexer.store.filters import MAX_VALUES, Filters, label_pairs
from service.deps import RuntimeDep
from service.errors import ServiceError
from service.results import item_model
from service.runtime import Runtime
from service.schemas import Item
from service.thumbnails import POLICY_OFF, RESPONSE_HEADERS, placeholder, render_thumbnail

router = APIRouter(prefix="/v1/items", tags=["items"])

ItemId = Annotated[int, Path(ge=1, le=2**62)]


async def _active_row(rt: Runtime, item_id: int):  # type: ignore[no-untyped-def]
    rows = await rt.run(rt.catalog.items, [item_id])
    row = rows.get(item_id)
    if row is None or row.status != "active":
        raise ServiceError(404, "not found", f"no item {item_id}")
    return row


Values = Annotated[list[str] | None, Query(max_length=MAX_VALUES)]


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV, one row per item"}},
)
async def export_items(
    rt: RuntimeDep,
    modality: Values = None,
    body_part_examined: Values = None,
    view_position: Values = None,
    laterality: Values = None,
    study_instance_uid: Values = None,
    series_instance_uid: Values = None,
    study_date_from: Annotated[str | None, Query(description="YYYY-MM-DD")] = None,
    study_date_to: Annotated[str | None, Query(description="YYYY-MM-DD")] = None,
    source_prefix: Annotated[str | None, Query(max_length=1000)] = None,
    label: Annotated[
        list[str] | None, Query(max_length=20, description="a label filter, name=value")
    ] = None,
    after_id: Annotated[int, Query(ge=0, le=2**62, description="rows after this id")] = 0,
    limit: Annotated[int | None, Query(ge=1, le=10**8)] = None,
) -> StreamingResponse:
    """The active items' metadata and source URIs as CSV (streamed, in id order), for
    pandas: ``pd.read_csv(url)``. Filters as on the search routes; page with ``limit`` and
    ``after_id`` (the last id of the previous page). Label columns are ``label:<name>``."""
    try:
        labels = label_pairs(label)
    except ValueError as exc:
        raise ServiceError(422, "invalid label filter", f"give label=name=value: {exc}") from None
    fields = {
        "modality": modality,
        "body_part_examined": body_part_examined,
        "view_position": view_position,
        "laterality": laterality,
        "study_instance_uid": study_instance_uid,
        "series_instance_uid": series_instance_uid,
        "study_date_from": study_date_from,  # strings: YYYY-MM-DD only, as on search
        "study_date_to": study_date_to,
        "source_prefix": source_prefix,
        "labels": labels,
    }
    try:
        filters = Filters.model_validate(fields)
    except ValidationError as exc:
        raise ServiceError(422, "invalid filters", str(exc)[:300]) from None
    names = await rt.run(label_names, rt.catalog, filters)
    header = [*COLUMNS, *(LABEL_PREFIX + n for n in names)]
    rows = export_rows(rt.catalog, filters, names, after_id=after_id, limit=limit)
    return StreamingResponse(
        csv_lines(header, rows),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="medsearch-items.csv"'},
    )


@router.get("/{item_id}", response_model=Item)
async def get_item(item_id: ItemId, rt: RuntimeDep) -> Item:
    return item_model(await _active_row(rt, item_id))


def _read_source(uri: str, limit: int) -> bytes:
    with open_uri(uri) as fp:
        data = fp.read(limit + 1)
    if len(data) > limit:
        raise ServiceError(413, "source too large", "the source file is over the limit")
    return data


@router.get(
    "/{item_id}/thumbnail",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "PNG thumbnail, or a placeholder with X-Thumbnail-Withheld",
            "headers": RESPONSE_HEADERS,
        }
    },
)
async def thumbnail(
    item_id: ItemId, rt: RuntimeDep, size: Annotated[int, Query(ge=16, le=512)] = 128
) -> Response:
    """A PNG thumbnail of the rendered image (multi-frame objects: their middle frame).

    Under ``MEDSEARCH_THUMBNAIL_POLICY`` (see ``/readyz``): an item whose pixels may show
    identifying text gets its known text regions blacked out (``X-Thumbnail-Masked``), or,
    with none known, a placeholder image with the reason in ``X-Thumbnail-Withheld``."""
    policy = rt.settings.thumbnail_policy
    key = (item_id, size, policy.value)
    cached = rt.thumbnails.get(key)
    if cached is None:
        row = await _active_row(rt, item_id)
        if policy is ThumbnailPolicy.NONE:
            cached = placeholder(size, POLICY_OFF)
        else:
            try:
                data = await rt.run(_read_source, row.source_uri, rt.imaging.max_file_bytes)
            except (SourceError, OSError):
                raise ServiceError(
                    404, "source unavailable", "the item's file cannot be read"
                ) from None
            cached = await render_thumbnail(rt, data, size, row)
        rt.thumbnails.put(key, cached)
    headers = {"Cache-Control": "private, max-age=3600", **cached.headers()}
    return Response(cached.png, media_type="image/png", headers=headers)
