"""What the decoder returns: rendered 8-bit RGB pixels with metadata, or a named refusal."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

RENDER_POLICY = "viewer-v1"
"""The rendering policy of this version (see :mod:`indexer.imaging.render`).

Like the preprocessing recipe it is part of an index's identity: a change to how pixels
are rendered gets a new name, and queries are rendered with the index's policy.
"""


class Reason(StrEnum):
    """Why an input produced no image. Fixed phrases, safe to log and to return."""

    NO_IMAGE = "no image"  # DICOM without pixel data: SR, RTPLAN, RTSTRUCT, ECG, ...
    UNSUPPORTED = "unsupported format"
    TOO_LARGE = "too large"  # pixel count, frame count or byte size above the limits
    CORRUPT = "corrupt"  # the file cannot be parsed
    UNDECODABLE = "cannot decode pixel data"  # parsed, but the pixel data does not decode
    TIMEOUT = "decode timeout"
    MEMORY = "decode memory limit"
    CRASHED = "decoder crashed"
    EMPTY = "empty file"
    UNREADABLE = "cannot read source"  # the archive member or PACS instance did not come
    INTERNAL = "internal error"  # a bug in medsearch, not the file's fault (logged, retried)


TRANSIENT_REASONS = frozenset(
    {Reason.CRASHED, Reason.TIMEOUT, Reason.MEMORY, Reason.UNREADABLE, Reason.INTERNAL}
)
"""Reasons that may not be the file's fault (a worker that died, a busy machine, a source
that did not answer, a bug): a later run tries the item again, up to a number of attempts.
The others (``no image``, ``unsupported format``, ``corrupt``, ``too large``, ...) are the
file's own and are not retried unless asked (``index build --retry-failed``)."""


class ImageMetadata(BaseModel):
    """What the catalog stores about an image (no PHI unless allow-listed)."""

    model_config = ConfigDict(extra="forbid")

    format: str  # dicom, png, jpeg, tiff, bmp
    width: int
    height: int
    # DICOM only
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None
    study_instance_uid: str | None = None
    sop_class_uid: str | None = None
    frame: int | None = None  # 1-based frame number
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
    patient_key: str | None = None  # salted hash of the patient identity, when configured
    phi: dict[str, str] | None = None  # allow-listed PHI attributes, when configured
    # how the pixels were rendered
    render_policy: str = RENDER_POLICY
    voi: str | None = None  # window | lut | percentile | percentile-fallback | minmax | none
    phash: str | None = None  # perceptual hash of the rendering (indexer.imaging.phash)


@dataclass
class DecodedImage:
    """One rendered image: (H, W, 3) ``uint8`` RGB as the model will see it (pre-resize).

    A guarded worker may hand over less than the full rendering (see
    :class:`indexer.imaging.guard.DecodeJob`): the model's input for ``recipe`` (480x480,
    (H, W) when ``grey``), or a thumbnail. ``metadata`` always describes the full image.
    """

    pixels: npt.NDArray[np.uint8]
    metadata: ImageMetadata
    grey: bool = False  # rendered from one channel (R = G = B)
    recipe: str | None = None  # set when ``pixels`` is the model's input for this recipe


@dataclass
class FileInfo:
    """Facts about the input file itself."""

    sha256: str
    size: int


@dataclass
class DecodeResult:
    """The images of one input file, or the reason there are none."""

    file: FileInfo
    images: list[DecodedImage] = field(default_factory=list)
    reason: Reason | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None and bool(self.images)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reason": self.reason.value if self.reason else None,
            "detail": self.detail,
            "images": [im.metadata.model_dump(mode="json") for im in self.images],
        }
