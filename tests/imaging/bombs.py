"""Hostile files made from corpus files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)


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


def write_deflate_bomb(out: Path, inflated_mb: int = 600) -> Path:
    """A Deflated Explicit VR Little Endian file of a few hundred KB whose dataset inflates
    to ``inflated_mb`` MB (one private OB element of zeros): pydicom inflates it whole."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    size = inflated_mb << 20
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with out.open("wb") as fp:
        fp.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(DicomFileLike(fp), meta, enforce_standard=True)
        fp.write(deflate.compress(struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, size)))
        zeros = b"\0" * (16 << 20)
        for _ in range(size // len(zeros)):
            fp.write(deflate.compress(zeros))
        fp.write(deflate.flush())
    return out
