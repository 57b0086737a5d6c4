"""DICOM objects to rendered frames: header limits, frame choice, decode, render, metadata.

Pixel data is decoded by pydicom's decoders (pylibjpeg with openjpeg/libjpeg/rle, and
python-gdcm as a fallback), which cover every transfer syntax in the pydicom and
pydicom-data test files. Multi-frame objects give their middle frame (1-based frame
``n // 2 + 1``) by default, or every frame with ``frames="all"``; only the frames asked for
are decoded. Attributes of enhanced multi-frame objects (rescale, window) are taken from
the frame's functional groups.
"""

from __future__ import annotations

import logging
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from indexer.errors import ImageRefused
from indexer.imaging.dicom_meta import dicom_metadata
from indexer.imaging.render import grey_to_rgb, render_colour, render_grey
from indexer.imaging.types import DecodedImage, Reason
from indexer.settings import ImagingSettings

logger = logging.getLogger(__name__)

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_FRAME_KEYWORDS = (
    "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "SamplesPerPixel", "Modality",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
    "VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
)  # fmt: skip
_GROUP_ITEMS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}


def read_header(fp: str | BinaryIO) -> Dataset:
    """Parse a DICOM file without its pixel data values (deferred), refusing garbage."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        ds = pydicom.dcmread(fp, force=True, defer_size=1 << 16)
    except RecursionError as exc:
        raise ImageRefused(Reason.CORRUPT, "sequence nesting too deep") from exc
    except MemoryError:  # a deflated dataset that inflates past the limit: not "corrupt"
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parse failure is "corrupt"
        detail = f"not a readable DICOM file ({type(exc).__name__})"
        raise ImageRefused(Reason.CORRUPT, detail) from None
    if len(ds) == 0:
        raise ImageRefused(Reason.CORRUPT, "no DICOM elements")
    _infer_transfer_syntax(ds)
    return ds


def _infer_transfer_syntax(ds: Dataset) -> None:
    """A dataset without file meta (raw, as old archives hold) was read in some encoding;
    its native pixel data is in that encoding too. Encapsulated data stays undecodable."""
    meta = ds.file_meta
    if "TransferSyntaxUID" in meta or "PixelData" not in ds:
        return
    pixel = ds.get_item("PixelData")
    undefined = getattr(pixel, "is_undefined_length", False) or (
        getattr(pixel, "length", 0) == 0xFFFFFFFF
    )
    if undefined:
        return
    implicit, little = ds.original_encoding
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def frame_view(ds: Dataset, index: int) -> Dataset:
    """The attributes that render frame ``index`` (0-based), functional groups applied."""
    view = Dataset()
    for keyword in _FRAME_KEYWORDS:
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    groups: list[Any] = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and 0 <= index < len(per_frame):
        groups.append(per_frame[index])  # per-frame values override shared ones
    for group in groups:
        for seq_keyword, keywords in _GROUP_ITEMS.items():
            seq = group.get(seq_keyword)
            if not seq:
                continue
            for keyword in keywords:
                if keyword in seq[0]:
                    setattr(view, keyword, seq[0][keyword].value)
    return view


def _geometry(ds: Dataset, settings: ImagingSettings) -> tuple[int, int, int]:
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not isinstance(rows, int) or not isinstance(cols, int) or rows <= 0 or cols <= 0:
        raise ImageRefused(Reason.CORRUPT, "missing or invalid Rows/Columns")
    try:
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise ImageRefused(Reason.CORRUPT, "invalid Number of Frames") from None
    if rows * cols > settings.max_pixels:
        raise ImageRefused(
            Reason.TOO_LARGE, f"{cols}x{rows} pixels, above the limit of {settings.max_pixels}"
        )
    if n_frames < 1 or n_frames > settings.max_frames:
        raise ImageRefused(Reason.TOO_LARGE, f"{n_frames} frames, outside 1..{settings.max_frames}")
    return rows, cols, n_frames


def frame_indices(n_frames: int, policy: str) -> list[int]:
    """0-based indices of the frames to render: the middle one, or all."""
    return list(range(n_frames)) if policy == "all" else [n_frames // 2]


def render_frame(
    ds: Dataset, arr: npt.NDArray[Any], index: int
) -> tuple[npt.NDArray[np.uint8], str]:
    view = frame_view(ds, index)
    photometric = str(view.get("PhotometricInterpretation", "")).strip().upper()
    if arr.ndim == 2 and photometric in ("MONOCHROME1", "MONOCHROME2", ""):
        grey, voi = render_grey(arr, view)
        return grey_to_rgb(grey), voi
    if arr.ndim == 2 and photometric == "PALETTE COLOR":
        return render_colour(arr, ds), "none"
    if arr.ndim == 3 and arr.shape[2] == 3:
        return render_colour(arr, view), "none"
    if arr.ndim == 2:  # unknown grey-like photometric: treat as MONOCHROME2
        grey, voi = render_grey(arr, view)
        return grey_to_rgb(grey), voi
    raise ImageRefused(Reason.UNDECODABLE, f"unexpected pixel array shape {arr.shape}")


def decode_dicom(fp: str | BinaryIO, settings: ImagingSettings) -> list[DecodedImage]:
    """Every frame asked for by ``settings.frames``, rendered, with its metadata."""
    ds = read_header(fp)
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        raise ImageRefused(Reason.NO_IMAGE, _kind(ds))
    rows, cols, n_frames = _geometry(ds, settings)
    images: list[DecodedImage] = []
    plugins = decoder_order(ds)
    for index in frame_indices(n_frames, settings.frames):
        arr = _decode_frame(ds, index, plugins)
        pixels, voi = render_frame(ds, arr, index)
        if pixels.shape[:2] != (rows, cols):
            raise ImageRefused(Reason.UNDECODABLE, f"decoded shape {pixels.shape[:2]}")
        meta = dicom_metadata(ds, width=cols, height=rows, frame=index + 1, settings=settings)
        meta.voi = voi
        grey = voi != "none"  # render_frame names a VOI for grey frames only
        images.append(DecodedImage(pixels=pixels, metadata=meta, grey=grey))
    return images


# GDCM goes last: on some damaged codestreams it aborts the process (found by fuzzing).
# The guarded worker pool survives that; an in-process caller should not meet it first.
PLUGIN_PREFERENCE = ("pylibjpeg", "pydicom", "pillow", "pyjpegls", "gdcm")


def decoder_order(ds: Dataset) -> list[str]:
    """The pixel-data plugins to try for this transfer syntax, safest first."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None:
        return [""]
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return [""]
    if not decoder.is_encapsulated:
        return [""]  # native data: no plugin involved
    available = set(decoder.available_plugins)
    ordered = [p for p in PLUGIN_PREFERENCE if p in available]
    return ordered + sorted(available - set(ordered)) or [""]


def _decode_frame(ds: Dataset, index: int, plugins: list[str]) -> npt.NDArray[Any]:
    failure: BaseException | None = None
    for plugin in plugins:
        try:
            return np.asarray(pixel_array(ds, index=index, decoding_plugin=plugin))
        except (MemoryError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - codecs raise anything, Rust panics too
            failure = exc
    assert failure is not None
    raise ImageRefused(Reason.UNDECODABLE, _codec_detail(ds, failure))


def _kind(ds: Dataset) -> str:
    sop_class = ds.get("SOPClassUID")
    name = getattr(sop_class, "name", None) if sop_class is not None else None
    modality = ds.get("Modality")
    return str(name or modality or "no Pixel Data element")[:80]


def _codec_detail(ds: Dataset, exc: BaseException) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    ts_name = getattr(ts, "name", None) or str(ts or "unknown transfer syntax")
    # codec messages describe lengths and syntaxes, not attribute values
    message = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{ts_name}: {type(exc).__name__}: {message}".rstrip(": ")
