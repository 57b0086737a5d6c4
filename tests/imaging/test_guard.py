"""The guarded decoder: a timeout, a crash and a memory bomb each end with a named reason,
and the worker goes on with the next file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from indexer.imaging.decode import decode_bytes
from indexer.imaging.guard import DecodeJob, DecoderWorker
from indexer.imaging.types import TRANSIENT_REASONS, Reason
from indexer.settings import ImagingSettings
from tests.imaging.bombs import write_deflate_bomb, write_memory_bomb

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


def test_a_worker_killed_between_jobs_fails_no_job() -> None:
    worker = DecoderWorker(ImagingSettings())
    try:
        assert worker.decode(DecodeJob(data=_bytes("MR_small.dcm"))).ok
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)  # as a crashing codec would die
        time.sleep(0.5)
        # the next job is not the one that killed it: it runs on a fresh worker
        assert worker.decode(DecodeJob(data=_bytes("MR_small.dcm"))).ok
        assert worker.decode(DecodeJob(data=_bytes("MR_small.dcm"))).ok
    finally:
        worker.close()


def test_a_worker_dying_mid_job_is_retried_once_on_a_fresh_worker(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    # 36 Mpx (under the 40 Mpx limit): ~1 s to decode, so the kill 0.3 s in lands mid-job
    # (4000x4000 decoded in under 0.3 s on an idle machine: the kill came after the job)
    Image.effect_noise((6000, 6000), 60).save(big, compress_level=1)
    worker = DecoderWorker(ImagingSettings())
    try:
        assert worker.decode(DecodeJob(data=_bytes("CT_small.dcm"))).ok
        pid = worker.pid
        assert pid is not None
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(worker.decode, DecodeJob(path=str(big)))
            time.sleep(0.3)
            os.kill(pid, signal.SIGKILL)
            result = pending.result(timeout=120)
        assert result.ok, result.reason
        assert worker.restarts == 1 and worker.pid != pid
    finally:
        worker.close()


def sof0_height_zero() -> bytes:
    """pydicom's SC_rgb_jpeg_dcmtk.dcm with the JPEG SOF0 height set to 0: the codec
    allocates until the worker's memory limit (found by a black-box audit)."""
    data = bytearray(_bytes("SC_rgb_jpeg_dcmtk.dcm"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 7] = b"\0\0"
    return bytes(data)


def test_a_job_never_inherits_a_memory_failure() -> None:
    """bad, good, good three times over: before, the goods after a bad got 'decoder
    crashed' (a worker left at its memory limit)."""
    worker = DecoderWorker(ImagingSettings(decode_memory_mb=1024))
    bad, good = sof0_height_zero(), _bytes("CT_small.dcm")
    try:
        reasons = [worker.decode(DecodeJob(data=d)).reason for _ in range(3) for d in (bad, good)]
    finally:
        worker.close()
    assert reasons == [Reason.MEMORY, None] * 3


def test_the_patient_hash_salt_reaches_the_workers() -> None:
    """A SecretStr serialises masked: workers got '**********' and every decode crashed."""
    settings = ImagingSettings(patient_hash_salt="a-salt-of-16-chars-or-more")
    worker = DecoderWorker(settings)
    try:
        result = worker.decode(DecodeJob(data=_bytes("CT_small.dcm")))
    finally:
        worker.close()
    assert result.ok, (result.reason, result.detail)
    expected = decode_bytes(_bytes("CT_small.dcm"), settings).images[0].metadata.patient_key
    assert result.images[0].metadata.patient_key == expected
    assert expected and len(expected) == 32


def test_codec_output_is_captured_not_printed(capfd: pytest.CaptureFixture[str]) -> None:
    data = bytearray(_bytes("US1_J2KR.dcm"))
    siz = data.find(b"\xff\x51")
    data[siz + 40 : siz + 42] = b"\0\0"  # an invalid component subsampling
    worker = DecoderWorker(ImagingSettings())
    try:
        result = worker.decode(DecodeJob(data=bytes(data)))
        assert result.reason == Reason.UNDECODABLE
    finally:
        worker.close()
    out, err = capfd.readouterr()
    assert "Marker handler" not in out + err


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


def test_a_deflate_bomb_is_a_memory_refusal_not_corrupt(tmp_path: Path) -> None:
    """600 MB of dataset in a few hundred KB: it was refused as ``corrupt`` (the parser's
    MemoryError taken for a parse error), a permanent reason for a limit of this host."""
    out = write_deflate_bomb(tmp_path / "deflated.dcm")
    assert out.stat().st_size < 2 << 20
    worker = DecoderWorker(ImagingSettings(decode_memory_mb=512))
    try:
        result = worker.decode(DecodeJob(path=str(out)))
        assert result.reason == Reason.MEMORY, (result.reason, result.detail)
        assert worker.decode(DecodeJob(data=_bytes("CT_small.dcm"))).ok  # goes on
    finally:
        worker.close()


def test_a_file_that_cannot_be_read_is_transient_not_corrupt(tmp_path: Path) -> None:
    """A file gone (or unreadable) between listing and decoding: retried by the next run."""
    worker = DecoderWorker(ImagingSettings())
    try:
        result = worker.decode(DecodeJob(path=str(tmp_path / "gone.dcm")))
        assert result.reason == Reason.UNREADABLE and result.reason in TRANSIENT_REASONS
        assert result.detail == "No such file or directory"
    finally:
        worker.close()


_KILLED_PARENT = """
import os, sys
from pydicom.data import get_testdata_file
from indexer.encoders.preprocess import make_recipe
from indexer.imaging.guard import DecodeJob, DecoderWorker
from indexer.settings import ImagingSettings

recipe = make_recipe("reference", (480, 480), (0.5,) * 3, (0.5,) * 3)
worker = DecoderWorker(ImagingSettings())
assert worker.decode(DecodeJob(path=get_testdata_file("CT_small.dcm"), recipe=recipe)).ok
held = set()
for pid in (os.getpid(), worker.pid):
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # the listing's own descriptor
            pass
print(worker.pid, *sorted(held), "end", sep="\\n", flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_parent_leaves_no_file_behind(tmp_path: Path) -> None:
    """SIGKILL to the whole process group (as Ray stops its workers: the resource tracker
    dies too): before, each worker left its capture file in the temporary directory and
    its shared-memory block in /dev/shm (memory that only a reboot returned)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_PARENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        start_new_session=True,
    )
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    held = list(iter(lambda: proc.stdout.readline().strip(), "end"))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{worker}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any("medsearch" in name for name in held), held  # it did hold its files
    left = [name for name in held if name.startswith("/") and os.path.exists(name)]
    assert not [name for name in left if "medsearch" in name or "/dev/shm" in name], left
    assert not list(tmp_path.iterdir())


def test_the_worker_s_last_words_name_its_crash() -> None:
    """What a dying worker writes (a codec's abort message) ends the crash's detail, with
    quoted values redacted, through the capture file it was handed."""
    worker = DecoderWorker(ImagingSettings())
    try:
        result = worker.decode(_DyingJob(data=b"x"))
        mixed = worker.decode(_DyingJob(data=b"codec abort on 'O\\'Brien \"Jr\"' at 12\n"))
    finally:
        worker.close()
    assert result.reason == Reason.CRASHED
    assert result.detail == "exit code 70: codec abort on '…'"
    assert mixed.detail == "exit code 70: codec abort on '…'"  # both quote kinds in one


def _die_saying(message: bytes) -> None:
    os.write(2, message)
    os._exit(70)


class _DyingJob(DecodeJob):
    """A job whose arrival makes the worker print a line and die, as a crashing codec."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_die_saying, (self.data if self.data != b"x" else _ABORT,))


_ABORT = b"codec abort on 'PATIENT^NAME'\n"
