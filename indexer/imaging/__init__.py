"""Reading medical images: DICOM rendered like a viewer, common raster formats, limits.

Entry points: :func:`decode_path` and :func:`decode_bytes` (in-process) and
:class:`DecoderPool` (worker processes with a time and memory budget per file).

The decoders (pydicom and its codecs: ~0.35 s to import) load on first use, so that a
process that only hands jobs to decoder processes (a Ray actor, the service) does not
import them.
"""

from typing import TYPE_CHECKING

from indexer.imaging.types import (
    RENDER_POLICY,
    DecodedImage,
    DecodeResult,
    FileInfo,
    ImageMetadata,
    Reason,
)
from indexer.lazy import lazy_names

if TYPE_CHECKING:
    from indexer.imaging.decode import decode_bytes, decode_path, sniff

__getattr__ = lazy_names(__name__, {"decode": ("decode_bytes", "decode_path", "sniff")})

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
