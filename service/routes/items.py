"""An indexed item's metadata and its thumbnail (rendered as the model saw it)."""

from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from PIL import Image

from indexer.errors import SourceError
from indexer.sources import open_uri
from service.deps import RuntimeDep
from service.errors import ServiceError
from service.results import item_model
from service.runtime import Runtime
from service.schemas import Item

router = APIRouter(prefix="/v1/items", tags=["items"])

ItemId = Annotated[int, Path(ge=1, le=2**62)]


async def _active_row(rt: Runtime, item_id: int):  # type: ignore[no-untyped-def]
    rows = await rt.run(rt.catalog.items, [item_id])
    row = rows.get(item_id)
    if row is None or row.status != "active":
        raise ServiceError(404, "not found", f"no item {item_id}")
    return row


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
    responses={200: {"content": {"image/png": {}}, "description": "PNG thumbnail"}},
)
async def thumbnail(
    item_id: ItemId, rt: RuntimeDep, size: Annotated[int, Query(ge=16, le=512)] = 128
) -> Response:
    """A PNG thumbnail of the rendered image (multi-frame objects: their middle frame)."""
    cached = rt.thumbnails.get((item_id, size))
    if cached is None:
        row = await _active_row(rt, item_id)
        try:
            data = await rt.run(_read_source, row.source_uri, rt.imaging.max_file_bytes)
        except (SourceError, OSError):
            raise ServiceError(
                404, "source unavailable", "the item's file cannot be read"
            ) from None
        image = await rt.decode(data, thumbnail=size)  # shrunk in the worker

        def encode() -> bytes:
            img = Image.fromarray(image.pixels)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return buf.getvalue()

        cached = await rt.run(encode)
        rt.thumbnails.put((item_id, size), cached)
    return Response(
        cached, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
    )
