"""Reading medical images: DICOM rendered like a viewer, common raster formats, limits.

Entry points: :func:`decode_path` and :func:`decode_bytes` (in-process) and
:class:`DecoderPool` (worker processes with a time and memory budget per file).
"""

from indexer.imaging.decode import decode_bytes, decode_path, sniff
from indexer.imaging.types import (
    RENDER_POLICY,
    DecodedImage,
    DecodeResult,
    FileInfo,
    ImageMetadata,
    Reason,
)

__all__ = [
    "RENDER_POLICY",
    "DecodeResult",
    "DecodedImage",
    "FileInfo",
    "ImageMetadata",
    "Reason",
    "decode_bytes",
    "decode_path",
    "sniff",
]
