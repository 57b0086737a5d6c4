"""Every file of the real corpus renders or is refused with a named reason; none raises."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from indexer.imaging import Reason, decode_path
from indexer.imaging.dicom import PIXEL_KEYWORDS
from indexer.settings import ImagingSettings
from tests.imaging.corpus import corpus_files, label

# Files that are refused, with the reason, and why that is right.
EXPECTED_REFUSALS = {
    # non-conformant 12-bit JPEG (bad SOS parameters): libjpeg, GDCM and dcmtk all refuse it
    "test_files/JPEG-lossy.dcm": Reason.UNDECODABLE,
    # a J2K codestream whose header claims ~3.8e12 pixels (a test of fragment parsing)
    "test_files/JPEG2000-embedded-sequence-delimiter.dcm": Reason.UNDECODABLE,
    "test_files/MR_truncated.dcm": Reason.UNDECODABLE,  # pixel data shorter than declared
    "data/emri_small_jpeg_2k_lossless_too_short.dcm": Reason.CORRUPT,  # ends mid-fragment
    "test_files/badVR.dcm": Reason.CORRUPT,  # invalid Number of Frames
    "test_files/meta_missing_tsyntax.dcm": Reason.CORRUPT,  # Pixel Data without Rows/Columns
    "test_files/nested_priv_SQ.dcm": Reason.CORRUPT,  # ditto
    "test_files/no_meta.dcm": Reason.UNSUPPORTED,  # a one-element fragment
}
NOT_IMAGES = (".txt", ".json", ".dump", ".icc", ".gz", ".zip", ".md", "README")

# every transfer syntax in the corpus (it has no JPEG lossless process 14, .4.57, file)
TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "implicit VR little endian",
    "1.2.840.10008.1.2.1": "explicit VR little endian",
    "1.2.840.10008.1.2.1.99": "deflated",
    "1.2.840.10008.1.2.2": "explicit VR big endian",
    "1.2.840.10008.1.2.4.50": "JPEG baseline",
    "1.2.840.10008.1.2.4.51": "JPEG extended",
    "1.2.840.10008.1.2.4.70": "JPEG lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE lossless",
}


def _source_constant(path: Path, frame: int) -> bool:
    from pydicom.pixels.utils import pixel_array

    ds = dcmread(path, force=True)
    arr = pixel_array(ds, index=frame - 1)
    return bool(np.nanmin(arr) == np.nanmax(arr))


@pytest.mark.slow
def test_whole_corpus_renders_or_is_refused_with_a_reason() -> None:
    settings = ImagingSettings()
    counts: collections.Counter[str] = collections.Counter()
    syntaxes: collections.Counter[str] = collections.Counter()
    refused: dict[str, Reason] = {}
    files = corpus_files()
    assert len(files) > 200
    for path in files:
        result = decode_path(path, settings)  # must never raise
        name = label(path)
        if not result.ok:
            assert result.reason is not None, name
            refused[name] = result.reason
            counts[f"refused: {result.reason.value}"] += 1
            continue
        for image in result.images:
            px, meta = image.pixels, image.metadata
            assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3, name
            assert px.shape[:2] == (meta.height, meta.width), name
            if px.min() == px.max():
                assert _source_constant(path, meta.frame or 1), f"{name} renders flat"
            counts[f"rendered: {meta.format} voi={meta.voi}"] += 1
            syntaxes[meta.transfer_syntax_uid or meta.format] += 1

    print(f"\ncorpus: {len(files)} files")
    for key, value in sorted(counts.items()):
        print(f"  {value:4d}  {key}")
    for uid, what in TRANSFER_SYNTAXES.items():
        print(f"  {syntaxes[uid]:4d}  rendered in {what} ({uid})")

    present = {label(path) for path in files}
    assert Reason.INTERNAL not in refused.values(), refused  # no real file meets a bug
    for name, reason in EXPECTED_REFUSALS.items():
        if name in present:
            assert refused.get(name) == reason, (name, refused.get(name))
    for name, reason in refused.items():
        if reason == Reason.NO_IMAGE or name in EXPECTED_REFUSALS:
            continue
        assert name.endswith(NOT_IMAGES), f"{name} refused: {reason.value}"
    assert set(TRANSFER_SYNTAXES) <= set(syntaxes), set(TRANSFER_SYNTAXES) - set(syntaxes)
    assert sum(v for k, v in counts.items() if k.startswith("rendered")) >= 165


@pytest.mark.parametrize(
    "name", ["rtplan.dcm", "rtstruct.dcm", "test-SR.dcm", "waveform_ecg.dcm"], ids=str
)
def test_objects_without_pixels_are_no_image(name: str) -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None
    ds = dcmread(path, force=True)
    assert not any(k in ds for k in PIXEL_KEYWORDS)
    result = decode_path(path, ImagingSettings())
    assert result.reason == Reason.NO_IMAGE and not result.images
    assert result.detail  # names the kind of object
