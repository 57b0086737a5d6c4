"""Thumbnails under the burned-in text policy (``MEDSEARCH_THUMBNAIL_POLICY``).

``all``: the rendering, shrunk. ``none``: a placeholder for every item. ``safe`` (the
default): an item at risk (:func:`indexer.imaging.burned_in.risk`, from its catalog row)
gets its known text regions (read from its header with ``deid``'s recipes) blacked out in
the decoder worker, at full resolution, before shrinking, so this process never holds an
unmasked thumbnail of it; with no known region it gets the placeholder. Other items are
shown as under ``all`` (the same bytes).

A placeholder is a 200 ``image/png`` (an ``<img>`` shows it as is) with the reason in the
``X-Thumbnail-Withheld`` header; a masked thumbnail carries ``X-Thumbnail-Masked``.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from indexer.imaging.burned_in import Region, ThumbnailPolicy, read_text_regions, risk

if TYPE_CHECKING:
    from service.runtime import Runtime

ThumbnailKey = tuple[int, int, str]  # item id, size, policy
WITHHELD_HEADER = "X-Thumbnail-Withheld"
MASKED_HEADER = "X-Thumbnail-Masked"
POLICY_OFF = "thumbnails are turned off (MEDSEARCH_THUMBNAIL_POLICY=none)"
NO_REGION = "no known text region for this device"
MASKED = "burned-in text regions blacked out"
RESPONSE_HEADERS: dict[str, Any] = {
    WITHHELD_HEADER: {
        "description": "present on a placeholder: why the item's pixels are not shown",
        "schema": {"type": "string"},
    },
    MASKED_HEADER: {
        "description": "present when known burned-in text regions were blacked out",
        "schema": {"type": "string"},
    },
}


@dataclass(frozen=True)
class Thumbnail:
    """A PNG, and why it is a placeholder (``withheld``) or whether it was masked."""

    png: bytes
    withheld: str | None = None
    masked: bool = False

    def headers(self) -> dict[str, str]:
        if self.withheld is not None:
            return {WITHHELD_HEADER: self.withheld}
        return {MASKED_HEADER: MASKED} if self.masked else {}


def encode_png(pixels: npt.NDArray[np.uint8]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=8)
def _placeholder_png(size: int) -> bytes:
    img = Image.new("RGB", (size, size), (229, 231, 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, size - 1, size - 1), outline=(156, 163, 175))
    text = "withheld"
    left, top, right, bottom = draw.textbbox((0, 0), text)
    at = ((size - (right - left)) // 2, (size - (bottom - top)) // 2)
    draw.text(at, text, fill=(75, 85, 99))
    return encode_png(np.asarray(img))


def placeholder(size: int, reason: str) -> Thumbnail:
    return Thumbnail(_placeholder_png(size), withheld=reason)


async def render_thumbnail(rt: Runtime, data: bytes, size: int, row: Any) -> Thumbnail:
    """The thumbnail of an item (its catalog ``row``, its source ``data``) under the
    service's policy; ``none`` is answered before the source is read (:func:`placeholder`)."""
    why = None
    if rt.settings.thumbnail_policy is ThumbnailPolicy.SAFE:
        why = risk(row.modality, row.sop_class_uid, row.burned_in_annotation)
    mask: tuple[Region, ...] = ()
    if why is not None:
        mask = tuple(await rt.run(read_text_regions, data))
        if not mask:
            return placeholder(size, f"{why}; {NO_REGION}")
    image = await rt.decode(data, thumbnail=size, mask=mask)  # masked and shrunk in the worker
    return Thumbnail(await rt.run(encode_png, image.pixels), masked=bool(mask))
