"""PNG, JPEG, TIFF and BMP: every mode gives non-blank (H, W, 3) input; bombs are refused."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.imaging import Reason, decode_bytes, decode_path
from indexer.settings import ImagingSettings

H, W = 48, 64


def _ramp() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return ((xx * 4 + yy * 2) % 256).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_raw(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB, nor lie about its size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _modes() -> dict[str, bytes]:
    ramp = _ramp()
    grey = Image.fromarray(ramp)
    rgb = Image.fromarray(np.stack([ramp, 255 - ramp, ramp // 2], axis=2))
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(np.full((H, W), 200, np.uint8)))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    i16 = Image.fromarray((ramp.astype(np.uint16) * 257).astype(np.uint16))
    rgb16_rows = b"".join(
        b"\x00" + (np.stack([ramp[y], 255 - ramp[y], ramp[y]], 1).astype(">u2") * 257).tobytes()
        for y in range(H)
    )
    return {
        "png-1": _encode(grey.convert("1"), "PNG"),
        "png-L": _encode(grey, "PNG"),
        "png-P-transparency": _encode(pal, "PNG", transparency=0),
        "png-LA": _encode(grey.convert("LA"), "PNG"),
        "png-RGBA": _encode(rgba, "PNG"),
        "png-I;16": _encode(i16, "PNG"),
        "png-RGB16": png_raw(W, H, 16, 2, rgb16_rows),
        "jpeg-L": _encode(grey, "JPEG", quality=90),
        "jpeg-RGB": _encode(rgb, "JPEG", quality=90),
        "jpeg-CMYK": _encode(rgb.convert("CMYK"), "JPEG", quality=90),
        "tiff-RGB": _encode(rgb, "TIFF"),
        "tiff-I;16": _encode(i16, "TIFF"),
        "bmp-RGB": _encode(rgb, "BMP"),
        "bmp-P": _encode(pal, "BMP"),
    }


MODES = _modes()


@pytest.mark.parametrize("name", sorted(MODES))
def test_every_mode_gives_three_channels_not_blank(name: str) -> None:
    result = decode_bytes(MODES[name], ImagingSettings())
    assert result.ok, (result.reason, result.detail)
    px = result.images[0].pixels
    assert px.shape == (H, W, 3) and px.dtype == np.uint8
    assert px.std() > 10, "blank or flat"
    assert result.images[0].metadata.format == name.split("-")[0]


def test_sixteen_bit_grey_is_scaled_not_clamped() -> None:
    px = decode_bytes(MODES["png-I;16"], ImagingSettings()).images[0].pixels[:, :, 0]
    assert np.abs(px.astype(int) - _ramp().astype(int)).max() <= 1


def test_exif_orientation_is_applied() -> None:
    img = Image.fromarray(np.stack([_ramp()] * 3, axis=2))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encode(img, "JPEG", quality=95, exif=exif.tobytes())
    px = decode_bytes(data, ImagingSettings()).images[0].pixels
    assert px.shape == (W, H, 3)


def test_header_bomb_refused_before_decoding() -> None:
    data = png_raw(40000, 40000, 8, 0, b"\x00" * 10)
    result = decode_bytes(data, ImagingSettings())
    assert result.reason == Reason.TOO_LARGE and "pixels" in result.detail


def test_pixel_limit_is_configurable() -> None:
    result = decode_bytes(MODES["png-L"], ImagingSettings(max_pixels=H * W - 1))
    assert result.reason == Reason.TOO_LARGE


@pytest.mark.parametrize("cut", [20, 60, 200])
def test_truncated_images_are_refused(cut: int) -> None:
    for name in ("png-RGBA", "jpeg-RGB"):
        data = MODES[name][:cut]
        result = decode_bytes(data, ImagingSettings())
        assert result.ok or result.reason in (Reason.CORRUPT, Reason.UNSUPPORTED), name


def test_unknown_bytes_and_empty_files(tmp_path: Path) -> None:
    assert decode_bytes(b"hello world, not an image", ImagingSettings()).reason == (
        Reason.UNSUPPORTED
    )
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert decode_path(empty, ImagingSettings()).reason == Reason.EMPTY
    big = tmp_path / "big.png"
    big.write_bytes(MODES["png-L"])
    assert decode_path(big, ImagingSettings(max_file_bytes=10)).reason == Reason.TOO_LARGE


def test_file_facts_are_recorded(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "x.png"
    path.write_bytes(MODES["png-L"])
    result = decode_path(path, ImagingSettings())
    assert result.file.sha256 == hashlib.sha256(MODES["png-L"]).hexdigest()
    assert result.file.size == len(MODES["png-L"])
    assert (result.images[0].metadata.width, result.images[0].metadata.height) == (W, H)
