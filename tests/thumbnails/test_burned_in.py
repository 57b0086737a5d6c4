"""Which items are at risk of burned-in text, where deid's recipes put the text on real
files (deid-data's ultrasounds and screenshots, pydicom's US), and the mask applied in a
guarded decoder worker before the thumbnail is shrunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from indexer.imaging.burned_in import (
    FULL,
    Region,
    ThumbnailPolicy,
    apply_mask,
    policy_from_env,
    read_text_regions,
    risk,
)
from indexer.imaging.guard import DecodeJob, DecoderWorker
from indexer.settings import ImagingSettings

deid_data = pytest.importorskip("deid_data")
DEID = Path(deid_data.__file__).parent / "data"
GREY_US = DEID / "ultrasounds" / "GREYSCALE_IMAGE.dcm"  # Philips EPIQ 5G, BIA YES
RGB_US = DEID / "ultrasounds" / "RGB_IMAGE.dcm"  # Siemens S2000
SCREENSHOT = DEID / "dicom-cookies" / "image1.dcm"  # secondary capture, no device


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


@pytest.mark.parametrize(
    ("modality", "sop", "burned_in", "flagged"),
    [
        ("CT", "1.2.840.10008.5.1.4.1.1.2", None, False),
        ("CT", "1.2.840.10008.5.1.4.1.1.2", True, True),  # BIA YES flags any item
        ("US", None, None, True),
        ("us", None, None, True),
        ("US", None, False, False),  # BIA NO clears a risky modality
        (None, "1.2.840.10008.5.1.4.1.1.7", None, True),  # secondary capture, no modality
        ("CT", "1.2.840.10008.5.1.4.1.1.7", None, True),  # an SC that says CT
        ("OT", None, False, False),
        (None, None, None, False),  # PNG, JPEG: no header facts
    ],
)
def test_risk_rules(modality: str | None, sop: str | None, burned_in: bool | None, flagged: bool):
    reason = risk(modality, sop, burned_in)
    assert (reason is not None) == flagged
    assert reason is None or reason.isascii()  # it goes into a response header


def test_policy_from_the_environment() -> None:
    assert policy_from_env({}) is ThumbnailPolicy.SAFE
    assert policy_from_env({"MEDSEARCH_THUMBNAIL_POLICY": "None"}) is ThumbnailPolicy.NONE
    with pytest.raises(ValueError, match="MEDSEARCH_THUMBNAIL_POLICY must be one of"):
        policy_from_env({"MEDSEARCH_THUMBNAIL_POLICY": "hide"})


def test_mask_applies_regions_in_order_and_clamps() -> None:
    pixels = np.full((10, 20, 3), 200, dtype=np.uint8)
    regions = [Region(0, 0, FULL, FULL), Region(2, 2, 18, 8, keep=True), Region(-5, -5, 4, 3)]
    out = apply_mask(pixels, regions)
    assert out[5, 10].tolist() == [200, 200, 200]  # kept
    assert out[9, 10].tolist() == [0, 0, 0]  # outside the kept box
    assert not out[:3, :4].any()  # the last box, its negative corner clamped to 0
    assert pixels.min() == 200  # the input is not changed
    assert apply_mask(pixels[..., 0], regions).shape == (10, 20)  # grey


def test_deid_regions_of_real_files() -> None:
    grey = read_text_regions(GREY_US.read_bytes())
    # the screen outside the ultrasound region is blacked out, the region kept, and the
    # recipe's EPIQ box (the header band) blacked out last
    assert grey == [
        Region(0, 0, FULL, FULL),
        Region(14, 38, 1010, 758, keep=True),
        Region(0, 0, 1024, 49),
    ]
    assert read_text_regions(RGB_US.read_bytes())[-1] == Region(0, 0, 1024, 60)  # S2000


@pytest.mark.parametrize(
    "path",
    [SCREENSHOT, pydicom_file("US1_J2KR.dcm"), pydicom_file("CT_small.dcm")],
    ids=["screenshot", "US1_J2KR", "CT_small"],
)
def test_no_known_region(path: Path) -> None:
    assert read_text_regions(path.read_bytes()) == []


def test_not_dicom_or_damaged_has_no_region() -> None:
    assert read_text_regions(b"\x89PNG\r\n\x1a\n" + b"\0" * 100) == []
    assert read_text_regions(GREY_US.read_bytes()[:700]) == []  # cut inside the header


def test_worker_masks_before_shrinking() -> None:
    regions = tuple(read_text_regions(GREY_US.read_bytes()))
    worker = DecoderWorker(ImagingSettings(decode_timeout_s=60))
    try:
        full = worker.decode(DecodeJob(path=str(GREY_US))).images[0].pixels
        plain = worker.decode(DecodeJob(path=str(GREY_US), thumbnail=256)).images[0].pixels
        masked = worker.decode(DecodeJob(path=str(GREY_US), thumbnail=256, mask=regions))
    finally:
        worker.close()
    assert full.shape[:2] == (768, 1024)
    assert full[:49].any()  # the header band holds something to hide
    thumb = masked.images[0].pixels
    assert thumb.shape == plain.shape == (192, 256, 3)
    assert not thumb[:11].any()  # the band, 49 rows at 1/4 scale, less the filter's reach
    assert plain[:11].any()
    inside = (slice(14, 185), slice(8, 248))  # the kept region at 1/4, 2 px in
    assert np.array_equal(thumb[inside], plain[inside])
