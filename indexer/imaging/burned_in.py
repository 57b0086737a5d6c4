"""Burned-in text in what the service shows: which items are at risk, and where the text is.

Ultrasound screens, secondary captures, scanned documents and screenshots often carry the
patient's name in the pixels. The thumbnail policy (``MEDSEARCH_THUMBNAIL_POLICY``,
:class:`ThumbnailPolicy`) decides what a thumbnail may show; the model always sees the
whole image (only what is *shown* is masked).

Which items are at risk is decided from the catalog row alone (:func:`risk`): Burned In
Annotation ``YES``, or a modality or SOP class of :data:`RISK_MODALITIES` /
:data:`RISK_SOP_CLASSES` unless Burned In Annotation says ``NO``.

Where the text is comes from pydicom's ``deid`` library (:func:`text_regions`): its
``dicom`` recipe names boxes per manufacturer and model (and other header values), and its
``dicom.ultrasound`` recipe keeps only the Sequence of Ultrasound Regions (the image data)
and blacks out the rest of the screen. An item at risk with no known region gets no
thumbnail. ``deid`` imports matplotlib: it is imported on first use, never at start-up.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

POLICY_VARIABLE = "MEDSEARCH_THUMBNAIL_POLICY"


class ThumbnailPolicy(StrEnum):
    """What the service shows of an item's pixels (thumbnails, previews)."""

    SAFE = "safe"  # at-risk items: known text regions blacked out, else no thumbnail
    ALL = "all"  # every item as rendered
    NONE = "none"  # no thumbnails at all


RISK_MODALITIES: dict[str, str] = {
    "US": "ultrasound screens carry patient and operator text",
    "IVUS": "intravascular ultrasound screens carry patient text",
    "SC": "secondary captures are often screenshots",
    "OT": "'other' is mostly screenshots and scanned pages",
    "XC": "external-camera photographs may show labels and wristbands",
    "DOC": "documents are text",
    "ES": "endoscopy video captures carry an on-screen patient banner",
}
"""Modalities whose pixels often hold text that identifies the patient, with the reason."""

_SC = "secondary capture (screenshots, scanned pages)"
_US = "ultrasound (text on the screen)"
_VL = "visible-light capture (labels, on-screen banners)"
RISK_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.7": _SC,
    "1.2.840.10008.5.1.4.1.1.7.1": _SC,
    "1.2.840.10008.5.1.4.1.1.7.2": _SC,
    "1.2.840.10008.5.1.4.1.1.7.3": _SC,
    "1.2.840.10008.5.1.4.1.1.7.4": _SC,
    "1.2.840.10008.5.1.4.1.1.6.1": _US,
    "1.2.840.10008.5.1.4.1.1.6": _US,  # retired
    "1.2.840.10008.5.1.4.1.1.3.1": _US,
    "1.2.840.10008.5.1.4.1.1.3": _US,  # retired
    "1.2.840.10008.5.1.4.1.1.6.2": _US,
    "1.2.840.10008.5.1.4.1.1.77.1.1": _VL,  # VL endoscopic
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": _VL,  # video endoscopic
    "1.2.840.10008.5.1.4.1.1.77.1.4": _VL,  # VL photographic
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": _VL,  # video photographic
    "1.2.840.10008.5.1.4.1.1.104.1": "encapsulated document",
}
"""SOP classes whose pixels often hold identifying text (whatever the modality says)."""


def risk(modality: str | None, sop_class_uid: str | None, burned_in: bool | None) -> str | None:
    """Why an item's pixels may show identifying text (a short ASCII phrase), or None."""
    if burned_in is True:
        return "Burned In Annotation is YES"
    if burned_in is False:
        return None
    if modality and modality.upper() in RISK_MODALITIES:
        return f"modality {modality.upper()}: {RISK_MODALITIES[modality.upper()]}"
    if sop_class_uid in RISK_SOP_CLASSES:
        return RISK_SOP_CLASSES[sop_class_uid]
    return None


def policy_from_env(environ: dict[str, str]) -> ThumbnailPolicy:
    """The policy :data:`POLICY_VARIABLE` sets (``safe`` when unset); ValueError if invalid."""
    value = environ.get(POLICY_VARIABLE, "").strip().lower() or ThumbnailPolicy.SAFE.value
    try:
        return ThumbnailPolicy(value)
    except ValueError:
        allowed = ", ".join(p.value for p in ThumbnailPolicy)
        raise ValueError(f"{POLICY_VARIABLE} must be one of {allowed}, not {value!r}") from None


# -- regions

FULL = 1 << 30  # "the whole image" (slices clamp to the image)


@dataclass(frozen=True)
class Region:
    """A box of the full-resolution rendering, ``[x0, x1) x [y0, y1)``: blacked out, or
    (``keep``) shown again after an earlier region blacked it out. Applied in order."""

    x0: int
    y0: int
    x1: int
    y1: int
    keep: bool = False


def apply_mask(pixels: npt.NDArray[np.uint8], regions: Sequence[Region]) -> npt.NDArray[np.uint8]:
    """``pixels`` ((H, W) or (H, W, C)) with the regions blacked out, as a new array."""
    blank = np.zeros(pixels.shape[:2], dtype=bool)
    for r in regions:
        blank[max(r.y0, 0) : max(r.y1, 0), max(r.x0, 0) : max(r.x1, 0)] = not r.keep
    out = pixels.copy()
    out[blank] = 0
    return out


def _boxes(coordinates: Iterable[Any]) -> list[Region]:
    """deid's ``[[mask value, "x0,y0,x1,y1" | "all" | [...]], ...]`` as regions; a value
    that is not four integers (a damaged header's region) is skipped."""
    out: list[Region] = []
    for value, boxes in coordinates:
        for box in boxes if isinstance(boxes, list) else [boxes]:
            keep = int(value) == 1
            if str(box).strip().lower() == "all":
                out.append(Region(0, 0, FULL, FULL, keep))
                continue
            try:
                x0, y0, x1, y1 = (int(float(v)) for v in str(box).split(","))
            except ValueError:
                continue
            out.append(Region(x0, y0, x1, y1, keep))
    return out


def _recipe_regions(ds: Any, recipe: str) -> list[Region]:
    from deid.config import DeidRecipe
    from deid.dicom.pixels import has_burned_pixels

    # a fresh recipe each time: deid writes a file's "from:" coordinates into the recipe
    found = has_burned_pixels(ds, deid=DeidRecipe(recipe))
    return _boxes(c for result in found["results"] for c in result.get("coordinates", []))


def text_regions(ds: Any) -> list[Region]:
    """Where ``deid``'s recipes say the burned-in text of ``ds`` (a pydicom dataset) lies,
    in order; empty when no region is known (a box that blacks nothing out is none)."""
    regions: list[Region] = []
    if "SequenceOfUltrasoundRegions" in ds:
        screen = _recipe_regions(ds, "dicom.ultrasound")  # all out, the image regions kept
        if any(r.keep for r in screen):
            regions += screen
    regions += _recipe_regions(ds, "dicom")  # per manufacturer/model; last, so it wins
    return regions if any(not r.keep for r in regions) else []


def read_text_regions(data: bytes) -> list[Region]:
    """:func:`text_regions` of a DICOM file's header; empty when it is not DICOM or a
    recipe cannot be evaluated on it (the thumbnail is then withheld, never shown)."""
    from pydicom import dcmread

    try:
        return text_regions(dcmread(io.BytesIO(data), stop_before_pixels=True))
    except Exception:  # noqa: BLE001 - an unreadable header means no known region: withheld
        return []
