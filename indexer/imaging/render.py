"""Rendering policy ``viewer-v1``: DICOM pixel values to 8-bit RGB, the way a viewer shows them.

Grey images (MONOCHROME1/2):

1. Modality LUT: the Modality LUT Sequence, else Rescale Slope/Intercept (for enhanced
   multi-frame objects, from the frame's Pixel Value Transformation functional group).
2. VOI: the VOI LUT Sequence (output scaled by its descriptor's bit depth), else the first
   Window Center/Width with its VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID; PS3.3
   C.11.2.1.2), from the file or the frame's Frame VOI LUT functional group. Where no
   usable VOI is stored: a clip of the 1st to 99th percentile (the rendering of
   Microsoft's client toolkit), falling back to min-max when those percentiles coincide.
   A stored window that renders a non-constant image as one flat value (it does not fit
   the data, e.g. a brain window on a file whose pixels were replaced) is not used: the
   percentile clip is (recorded as ``percentile-fallback``).
3. MONOCHROME1 is inverted (white is low), after the VOI.
4. Scaled to 0..255, rounded, and replicated to three channels.

Colour images: PALETTE COLOR through its LUTs; YBR_* converted to RGB by the decoder;
samples wider than 8 bits scaled by ``2**BitsStored - 1``.

The result records which VOI was used (``window``, ``lut``, ``percentile``,
``percentile-fallback``, ``minmax``, ``none``) so that a user can see why an image looks as
it does (``medsearch preview``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi

logger = logging.getLogger(__name__)

Float = npt.NDArray[np.float64]


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        if not value:
            return None
        value = value[0]
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def window(x: Float, center: float, width: float, function: str = "LINEAR") -> Float:
    """PS3.3 C.11.2.1.2 windowing to [0, 1]."""
    function = function.strip().upper() or "LINEAR"
    if function == "SIGMOID":
        with np.errstate(over="ignore"):
            out: Float = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
        return out
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    # LINEAR: the centre is offset by 0.5 and the width by 1 (integer-valued data)
    if width <= 1.0:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def percentile_clip(x: Float) -> tuple[Float, str]:
    """Clip to the 1st..99th percentile and scale to [0, 1] (min-max if they coincide)."""
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.zeros_like(x), "minmax"
    sample = finite if finite.size <= 4_000_000 else finite[:: finite.size // 4_000_000 + 1]
    lo, hi = (float(v) for v in np.percentile(sample, [1.0, 99.0]))
    how = "percentile"
    if hi <= lo:
        lo, hi, how = float(finite.min()), float(finite.max()), "minmax"
    if hi <= lo:
        return np.zeros_like(x), how
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0), how


def _saturated(out: Float, x: Float) -> bool:
    """The stored window maps a non-constant image to one value: it does not fit the data."""
    lo, hi = np.nanmin(out), np.nanmax(out)
    return bool(lo == hi and np.nanmin(x) != np.nanmax(x))


def _voi_lut_bits(ds: Dataset) -> int:
    item = ds.VOILUTSequence[0]
    descriptor = item.LUTDescriptor
    bits = int(descriptor[2]) if len(descriptor) > 2 else 16
    return bits if 1 <= bits <= 16 else 16


def render_grey(arr: npt.NDArray[Any], ds: Dataset) -> tuple[npt.NDArray[np.uint8], str]:
    """One grey frame to (H, W) ``uint8``; ``ds`` carries the frame's attributes."""
    x = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    x[~np.isfinite(x)] = np.nan
    voi = "percentile"
    out: Float | None = None
    if ds.get("VOILUTSequence"):
        try:
            lut = np.asarray(apply_voi(arr_for_voi(arr, x), ds, 0), dtype=np.float64)
            out, voi = lut / float((1 << _voi_lut_bits(ds)) - 1), "lut"
        except (ValueError, IndexError, AttributeError, TypeError) as exc:
            logger.info("VOI LUT not usable (%s); falling back", type(exc).__name__)
    if out is None:
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            out = window(x, center, width, str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR"))
            voi = "window"
            if _saturated(out, x):
                out, voi = None, "percentile-fallback"
    if out is None:
        out, how = percentile_clip(x)
        voi = voi if voi == "percentile-fallback" else how
    out = np.nan_to_num(np.clip(out, 0.0, 1.0), nan=0.0)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 1.0 - out
    return np.round(out * 255.0).astype(np.uint8), voi


def arr_for_voi(raw: npt.NDArray[Any], modality: Float) -> npt.NDArray[Any]:
    """The VOI LUT is indexed by modality-LUT output; keep integers integer for pydicom."""
    if np.issubdtype(raw.dtype, np.integer) and np.all(np.isfinite(modality)):
        return np.round(modality).astype(np.int64)
    return modality


def render_colour(arr: npt.NDArray[Any], ds: Dataset) -> npt.NDArray[np.uint8]:
    """One colour frame (PALETTE COLOR indices or RGB samples) to (H, W, 3) ``uint8``."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(arr, ds))
        bits = 8 if rgb.dtype == np.uint8 else 16
        if bits == 16 and rgb.size and int(rgb.max()) <= 255:
            bits = 8  # 16-bit LUT entries holding 8-bit values, as some vendors write
        return _scale_bits(rgb[..., :3], bits)
    bits = int(ds.get("BitsStored", 8) or 8)
    if arr.dtype.kind == "f":
        x = arr.astype(np.float64)
        return np.round(percentile_clip(x)[0] * 255.0).astype(np.uint8)
    return _scale_bits(arr, bits)


def _scale_bits(arr: npt.NDArray[Any], bits: int) -> npt.NDArray[np.uint8]:
    if arr.dtype == np.uint8 and bits <= 8:
        return arr
    top = float((1 << max(1, min(bits, 32))) - 1)
    x = np.clip(arr.astype(np.float64), 0.0, top)
    return np.round(x * (255.0 / top)).astype(np.uint8)


def grey_to_rgb(grey: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
