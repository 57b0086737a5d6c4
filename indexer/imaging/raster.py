"""PNG, JPEG, TIFF and BMP files to 8-bit RGB, refusing decompression bombs before decoding.

The header's pixel count is checked against ``max_pixels`` (40 M by default, well under
Pillow's own ~89 M warning limit) before any pixel is decoded. JPEG EXIF orientation is
applied; CMYK, palette with transparency, LA/RGBA (composited onto black) and 16-bit grey
(scaled, not clamped) are converted by :func:`indexer.encoders.preprocess.to_rgb`.
Multi-page TIFFs give their first page.
"""

from __future__ import annotations

import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from indexer.encoders.preprocess import is_grey, to_rgb
from indexer.errors import ImageInputError, ImageRefused
from indexer.imaging.types import DecodedImage, ImageMetadata, Reason
from indexer.settings import ImagingSettings

FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # JPEG also yields MPO (multi-picture) files


def decode_raster(fp: str | BinaryIO, settings: ImagingSettings) -> DecodedImage:
    Image.init()  # register every plugin, so that ``formats`` can name TIFF and BMP
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp, formats=FORMATS)
        except UnidentifiedImageError:
            # the signature matched (see decode.sniff), the header does not parse
            raise ImageRefused(Reason.CORRUPT, "unreadable image header") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            detail = f"decompression bomb: {str(exc).split(',')[0]}"
            raise ImageRefused(Reason.TOO_LARGE, detail) from None
        except Exception as exc:  # noqa: BLE001 - untrusted bytes
            detail = f"unreadable header ({type(exc).__name__})"
            raise ImageRefused(Reason.CORRUPT, detail) from None
        with img:
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageRefused(Reason.CORRUPT, "image has no pixels")
            if width * height > settings.max_pixels:
                raise ImageRefused(
                    Reason.TOO_LARGE,
                    f"{width}x{height} pixels, above the limit of {settings.max_pixels}",
                )
            fmt = "jpeg" if img.format in ("JPEG", "MPO") else str(img.format).lower()
            try:
                img.load()
                oriented = ImageOps.exif_transpose(img) or img
                grey = is_grey(oriented)
                rgb = to_rgb(oriented)
                pixels = np.asarray(rgb, dtype=np.uint8).copy()
            except ImageInputError as exc:
                raise ImageRefused(Reason.UNDECODABLE, str(exc)) from None
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - truncated or corrupt image data
                raise ImageRefused(
                    Reason.CORRUPT, f"cannot decode {fmt} data ({type(exc).__name__})"
                ) from None
    h, w = pixels.shape[:2]
    meta = ImageMetadata(format=fmt, width=w, height=h, voi="none")
    return DecodedImage(pixels=pixels, metadata=meta, grey=grey)
