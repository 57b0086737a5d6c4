"""The guarded decoder: a timeout, a crash and a memory bomb each end with a named reason,
and the worker goes on with the next file."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from indexer.imaging.guard import DecodeJob, DecoderWorker
from indexer.imaging.types import Reason
from indexer.settings import ImagingSettings
from tests.imaging.bombs import write_memory_bomb

pytestmark = pytest.mark.slow


def _bytes(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None
    return Path(path).read_bytes()


def test_timeout_then_recovery() -> None:
    worker = DecoderWorker(ImagingSettings(decode_timeout_s=0.001))
    try:
        assert worker.decode(DecodeJob(data=_bytes("CT_small.dcm"))).reason == Reason.TIMEOUT
        worker.settings = ImagingSettings(decode_timeout_s=60)
        assert worker.decode(DecodeJob(data=_bytes("CT_small.dcm"))).ok
        assert worker.restarts == 1
    finally:
        worker.close()


def test_a_killed_worker_is_replaced() -> None:
    worker = DecoderWorker(ImagingSettings())
    try:
        assert worker.decode(DecodeJob(data=_bytes("MR_small.dcm"))).ok
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)  # as a crashing codec would die
        time.sleep(0.5)
        crashed = worker.decode(DecodeJob(data=_bytes("MR_small.dcm")))
        assert crashed.reason == Reason.CRASHED
        assert worker.decode(DecodeJob(data=_bytes("MR_small.dcm"))).ok
    finally:
        worker.close()


def test_a_memory_bomb_is_refused(tmp_path: Path) -> None:
    out = write_memory_bomb(tmp_path / "bomb.dcm")
    worker = DecoderWorker(ImagingSettings(decode_memory_mb=512, frames="all", max_frames=64))
    try:
        result = worker.decode(DecodeJob(path=str(out)))
        assert not result.ok and result.reason is not None
        assert result.reason in (Reason.MEMORY, Reason.UNDECODABLE, Reason.CORRUPT, Reason.CRASHED)
        assert worker.decode(DecodeJob(data=_bytes("CT_small.dcm"))).ok  # goes on
    finally:
        worker.close()
