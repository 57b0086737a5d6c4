"""The decoder's entry point: any input file (path or bytes) to rendered images or a refusal.

The format is sniffed from the first bytes, never from the name: ``DICM`` at offset 128 (or
a raw DICOM stream starting with group 0002/0008), PNG, JPEG, TIFF and BMP signatures.
Every failure becomes a :class:`~indexer.imaging.types.DecodeResult` with a named reason,
so one bad file never stops a batch. This runs in the calling process; untrusted input in
bulk goes through :mod:`indexer.imaging.guard`, which adds a time and memory budget.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
import zlib
from typing import BinaryIO

from indexer.errors import ImageRefused
from indexer.imaging.dicom import decode_dicom
from indexer.imaging.raster import decode_raster
from indexer.imaging.types import DecodedImage, DecodeResult, FileInfo, Reason
from indexer.settings import ImagingSettings

logger = logging.getLogger(__name__)

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
)


def sniff(head: bytes) -> str | None:
    """``dicom``, ``png``, ``jpeg``, ``tiff``, ``bmp`` or ``None`` from a file's first bytes."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    # raw DICOM without preamble: a (0002,xxxx) or (0008,xxxx) tag, little or big endian
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3] == 0:
        return "dicom"
    if len(head) >= 8 and head[:2] in (b"\x00\x02", b"\x00\x08") and head[2] == 0:
        return "dicom"
    return None


def _decode_stream(fp: BinaryIO, head: bytes, settings: ImagingSettings) -> list[DecodedImage]:
    kind = sniff(head)
    if kind is None:
        raise ImageRefused(Reason.UNSUPPORTED, "not DICOM, PNG, JPEG, TIFF or BMP")
    fp.seek(0)
    if kind == "dicom":
        return decode_dicom(fp, settings)
    return [decode_raster(fp, settings)]


def _is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from reading untrusted bytes (a codec or parser refusing them)
    rather than from a bug in medsearch's own code.

    A codec or parser error is raised inside the library (pydicom, Pillow, a codec) or is
    of a type that parsers raise on bad input. An exception raised in medsearch's own
    frames, or of a type that signals a programming error (``TypeError``, ``KeyError``,
    ``AttributeError``, ...) raised outside the parsers, is a bug.
    """
    if type(exc).__name__ == "PanicException":  # a Rust codec's panic (pyo3)
        return True
    frame = exc.__traceback__
    module = ""
    while frame is not None:
        module = str(frame.tb_frame.f_globals.get("__name__", ""))
        frame = frame.tb_next
    if module.startswith("indexer."):
        return False
    if module.split(".")[0] in _PARSER_MODULES:
        return True
    return isinstance(exc, _DATA_ERRORS)


_PARSER_MODULES = frozenset(
    {"pydicom", "PIL", "pylibjpeg", "openjpeg", "libjpeg", "rle", "gdcm", "jpeg_ls", "zlib"}
)
_DATA_ERRORS = (ValueError, EOFError, OSError, OverflowError, struct.error, zlib.error)


def _result(fp: BinaryIO, info: FileInfo, settings: ImagingSettings) -> DecodeResult:
    if info.size == 0:
        return DecodeResult(file=info, reason=Reason.EMPTY)
    head = fp.read(132)
    try:
        images = _decode_stream(fp, head, settings)
    except ImageRefused as exc:
        return DecodeResult(file=info, reason=Reason(exc.reason), detail=exc.detail)
    except MemoryError:
        return DecodeResult(file=info, reason=Reason.MEMORY)
    except RecursionError:
        return DecodeResult(file=info, reason=Reason.CORRUPT, detail="nesting too deep")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the boundary for untrusted bytes; a Rust
        # codec's panic (pyo3 PanicException) derives from BaseException, not Exception
        if _is_data_error(exc):
            logger.debug("%s while decoding; refused as corrupt", type(exc).__name__)
            return DecodeResult(file=info, reason=Reason.CORRUPT, detail=type(exc).__name__)
        logger.error("bug while decoding (%s); please report it", type(exc).__name__, exc_info=exc)
        return DecodeResult(file=info, reason=Reason.INTERNAL, detail=type(exc).__name__)
    return DecodeResult(file=info, images=images)


def decode_bytes(data: bytes, settings: ImagingSettings) -> DecodeResult:
    """Decode a file held in memory."""
    info = FileInfo(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    if info.size > settings.max_file_bytes:
        return DecodeResult(file=info, reason=Reason.TOO_LARGE, detail=f"{info.size} bytes")
    return _result(io.BytesIO(data), info, settings)


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def decode_path(path: str | os.PathLike[str], settings: ImagingSettings) -> DecodeResult:
    """Decode a file on disk without reading more of it than the decoder needs."""
    size = os.path.getsize(path)
    if size > settings.max_file_bytes:
        info = FileInfo(sha256="", size=size)
        return DecodeResult(file=info, reason=Reason.TOO_LARGE, detail=f"{size} bytes")
    info = FileInfo(sha256=file_sha256(path), size=size)
    with open(path, "rb") as fp:
        return _result(fp, info, settings)
