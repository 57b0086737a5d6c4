"""Inputs that fuzzing once turned into crashes (tests/fuzz/regressions/): each is refused
with a reason, in process and through the guarded pool, and nothing is printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.imaging.decode import decode_bytes
from indexer.imaging.guard import DecodeJob, DecoderPool
from indexer.settings import ImagingSettings

REGRESSIONS = sorted((Path(__file__).parents[1] / "fuzz" / "regressions").iterdir())
SETTINGS = ImagingSettings(max_pixels=4_000_000, max_frames=64)


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: p.name)
def test_a_former_crash_is_a_refusal(path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    data = path.read_bytes()
    with DecoderPool(SETTINGS, workers=1) as pool:
        guarded = pool.decode(DecodeJob(data=data))
    assert guarded.reason is not None and guarded.reason.value != "decoder crashed"
    out, err = capfd.readouterr()
    assert "panicked" not in out + err  # a Rust codec's panic message stays in the worker
    in_process = decode_bytes(data, SETTINGS)  # must not raise
    assert in_process.reason == guarded.reason
