"""Hostile files made from corpus files."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless


def write_memory_bomb(out: Path) -> Path:
    """An RLE object whose header claims 6000 x 6000 x 64 frames of 16 bits (4.6 GB)."""
    ds = dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.Rows = ds.Columns = 6000
    ds.NumberOfFrames = 64
    frame = b"\x00" * 64  # a tiny RLE-ish fragment; the decoder allocates from the header
    ds.PixelData = encapsulate([frame] * 64)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.save_as(out, enforce_file_format=True)
    return out
