"""A bug in medsearch's own rendering code is not a corrupt file: it is logged with its
traceback and counted apart (``internal error``, retried by the next run), while errors
that parsers and codecs raise on bad bytes stay ``corrupt``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file

from indexer.imaging import dicom
from indexer.imaging.decode import decode_bytes, decode_path
from indexer.imaging.types import TRANSIENT_REASONS, Reason
from indexer.settings import ImagingSettings


def _ct() -> str:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    return path


@pytest.mark.parametrize("bug", [TypeError, KeyError, AttributeError, ValueError, IndexError])
def test_a_bug_in_our_rendering_is_an_internal_error(
    bug: type[Exception], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a function that lives in our rendering module, as a real bug would
    scope: dict[str, Any] = {"__name__": "indexer.imaging.render", "bug": bug}
    exec("def render_frame(*_):\n    raise bug('planted')\n", scope)
    monkeypatch.setattr(dicom, "render_frame", scope["render_frame"])
    with caplog.at_level(logging.ERROR, logger="indexer.imaging.decode"):
        result = decode_path(_ct(), ImagingSettings())
    assert result.reason == Reason.INTERNAL and result.detail == bug.__name__
    assert Reason.INTERNAL in TRANSIENT_REASONS
    (record,) = [r for r in caplog.records if "bug while decoding" in r.getMessage()]
    assert record.exc_info is not None and "planted" in str(record.exc_info[1])


def test_a_none_called_in_our_code_is_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicom, "grey_to_rgb", None)
    assert decode_path(_ct(), ImagingSettings()).reason == Reason.INTERNAL


def test_a_library_error_on_bad_bytes_stays_corrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom

    def parser_fails(*_: Any, **__: Any) -> Any:
        raise pydicom.errors.InvalidDicomError("bad preamble")

    monkeypatch.setattr(dicom.pydicom, "dcmread", parser_fails)
    assert decode_path(_ct(), ImagingSettings()).reason == Reason.CORRUPT


def test_truncated_files_are_corrupt_or_undecodable_not_bugs() -> None:
    data = Path(_ct()).read_bytes()
    for cut in range(200, len(data), 997):
        result = decode_bytes(data[:cut], ImagingSettings())
        assert result.reason != Reason.INTERNAL, (cut, result.detail)
