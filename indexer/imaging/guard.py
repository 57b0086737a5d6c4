"""Decoding untrusted files in worker processes with a time and memory budget per file.

A crafted or damaged file can make a decoder hang, allocate gigabytes or crash the process
(codecs are C libraries). Each :class:`DecoderWorker` is a separate process with an
address-space limit (``RLIMIT_AS``, ``decode_memory_mb``); the parent waits at most
``decode_timeout_s`` for its answer. A worker that runs over time is killed and replaced
(reason ``decode timeout``); one that dies is replaced (``decoder crashed``); an
allocation over the limit fails inside the worker (``decode memory limit``). The batch
goes on in every case. :class:`DecoderPool` runs several workers from threads.

A job never inherits another job's failure:

- a worker found dead before a job is replaced before the job is sent;
- a worker that ran out of memory is replaced (its heap is left fragmented near the limit),
  and so is one whose address space grew by more than a quarter of ``decode_memory_mb``
  since it started (:data:`GROWTH_FRACTION`), before it takes the next job;
- a job whose worker crashed after serving earlier jobs is tried once more on a fresh
  worker; only a crash on a fresh worker is the job's. A memory failure is the job's own
  without a second try: a worker that had grown was already replaced, so the job met the
  limit nearly alone (trying a memory bomb twice only doubled its cost).

What a job hands back is chosen by the job (:class:`DecodeJob`): the full rendering, the
model's input for a recipe (480x480 ``uint8``, grey kept as one channel), or a thumbnail.
Only that crosses the process boundary, never full-resolution pixels that the caller
does not need; model inputs cross through a shared-memory slot per worker
(:mod:`indexer.imaging.handover`).

Codec libraries write to the terminal (``Invalid number of tiles``, pydicom warnings) and a
dying worker prints its traceback: a worker's standard output and error go to a capture
file instead, read after each job and logged at DEBUG level with quoted values redacted
(a pydicom warning may quote an attribute value). A crash is reported in one line. The
capture file has no name (a memory file, its descriptor handed to the worker, as the
shared-memory slot's is): a parent killed by SIGKILL, as Ray actors and killed builds are,
leaves nothing behind (named files were left in the temporary directory, one per worker,
by every such kill: 156 on a test machine).

Workers are started with ``spawn``: they share nothing with a parent that may hold ONNX
Runtime threads or open databases. Their settings cross as JSON without secrets; the
patient-hash salt is passed on its own (a ``SecretStr`` serialises masked).
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing as mp
import os
import select
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from indexer.encoders.preprocess import Recipe
from indexer.imaging.burned_in import Region
from indexer.imaging.handover import (
    HandedFd,
    SharedSlot,
    WorkerSlot,
    hand_over,
    slot_bytes,
    unnamed_file,
)
from indexer.imaging.phash import warm_up
from indexer.imaging.types import DecodeResult, FileInfo, Reason
from indexer.settings import ImagingSettings

logger = logging.getLogger(__name__)

GROWTH_FRACTION = 0.25
"""A worker whose address space grew by more than this share of ``decode_memory_mb`` since
it started is replaced before its next job."""
MEMORY_EXIT = 75  # a worker's exit code after it met its memory limit
CAPTURE_BYTES = 64 * 1024  # most codec output read back per job


@dataclass(frozen=True)
class DecodeJob:
    """A file to decode: a path on disk, or bytes (archive members, uploads).

    ``recipe``: hand back the model's input for it instead of the rendering;
    ``thumbnail``: hand back the rendering shrunk to at most this many pixels a side;
    ``mask``: with ``thumbnail``, black these regions out of the full-resolution rendering
    before shrinking (burned-in text: :mod:`indexer.imaging.burned_in`).
    """

    path: str | None = None
    data: bytes | None = None
    recipe: Recipe | None = None
    thumbnail: int | None = None
    mask: tuple[Region, ...] = ()


def _limit_memory(megabytes: int) -> None:
    try:
        import resource

        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError) as exc:  # not on this platform
        logging.getLogger(__name__).warning("no memory limit for decoders: %s", exc)


def _address_space() -> int:
    """This process's virtual size in bytes (what ``RLIMIT_AS`` counts), 0 if unknown."""
    try:
        with open("/proc/self/statm", "rb") as fp:
            return int(fp.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _capture_file() -> int:
    """A file with no name for a worker's output, in append mode (the worker's writes land
    at its end after the parent empties it)."""
    fd = unnamed_file("medsearch-decoder-output")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    return fd


def _capture_output(fd: int) -> None:
    """Send this process's fd 1 and 2 (C codecs, warnings, tracebacks) to ``fd``."""
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    warnings.simplefilter("always")  # one line per item, not once per process


def _serve(
    conn: Connection, settings_json: str, salt: str | None, capture: int, slot_fd: int
) -> None:
    """Worker main loop: decode jobs until the pipe closes.

    A worker that meets its memory limit exits at once with :data:`MEMORY_EXIT` (a codec
    may have leaked what it allocated, leaving too little even to answer): the parent
    reads that as ``decode memory limit``.
    """
    from indexer.imaging.decode import decode_bytes, decode_path  # here, not in the parent

    _capture_output(capture)
    settings = ImagingSettings.model_validate_json(settings_json)
    if salt is not None:
        settings = settings.model_copy(update={"patient_hash_salt": SecretStr(salt)})
    _limit_memory(settings.decode_memory_mb)
    warm_up()  # lazy imports now, while the parent loads its model
    slot = WorkerSlot(slot_fd)
    while True:
        try:
            job, use_slot = conn.recv()
        except (EOFError, OSError):
            return
        except MemoryError:
            os._exit(MEMORY_EXIT)
        try:
            if job.path is not None:
                result = decode_path(job.path, settings)
            else:
                result = decode_bytes(job.data or b"", settings)
            if result.reason == Reason.MEMORY:
                os._exit(MEMORY_EXIT)
            handed = hand_over(result, job.recipe, job.thumbnail, job.mask)
            message, layout = slot.put(handed, use_slot)  # no slot: all in the message
            conn.send((message, layout, _address_space()))
        except MemoryError:
            os._exit(MEMORY_EXIT)
        except OSError as exc:  # the file could not be opened or read (gone, no access,
            # an I/O error): not the file's fault, tried again by the next run
            detail = exc.strerror or type(exc).__name__
            failed = DecodeResult(file=FileInfo("", 0), reason=Reason.UNREADABLE, detail=detail)
            conn.send((failed, None, _address_space()))


def _redact(line: str) -> str:
    """A codec's line, cut at its first quote: what a message quotes is a value of the
    file (a name, an ID). Cutting, not matching pairs: a value holding both kinds of quote
    (``'O\'Brien "Jr"'``) left parts of itself outside any matched pair."""
    text = line.strip()
    quotes = [i for i in (text.find("'"), text.find('"')) if i >= 0]
    return (text[: min(quotes)] + "'…'" if quotes else text)[:200]


class DecoderWorker:
    """One decoder process, replaced after a timeout, a crash, or too much growth."""

    def __init__(self, settings: ImagingSettings) -> None:
        self.settings = settings
        self._settings_json = settings.model_dump_json(exclude={"patient_hash_salt"})
        secret = settings.patient_hash_salt
        self._salt = secret.get_secret_value() if secret is not None else None
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self._poller: select.poll | None = None  # waits on the pipe (one per process)
        self._served = 0  # jobs answered by the current process
        self._base_vm = 0  # its address space after its first job
        self._capture = _capture_file()
        self._captured = True  # the capture file may hold output: empty it before a job
        self._slot = SharedSlot()  # sized by the first job with a recipe
        self.restarts = 0

    def start(self) -> None:
        """Start the process now (it imports its codecs while the caller goes on)."""
        if self._proc is None:
            self._start()

    def _start(self) -> Connection:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_serve,
            args=(
                child,
                self._settings_json,
                self._salt,
                HandedFd(self._capture),
                HandedFd(self._slot.fd),
            ),
            daemon=True,
            name="medsearch-decoder",
        )
        self._proc.start()
        child.close()
        self._conn = parent
        self._poller = select.poll()  # reused: ``Connection.poll`` builds a selector per call
        self._poller.register(parent.fileno(), select.POLLIN)
        self._served, self._base_vm = 0, 0
        return parent

    def _kill(self) -> None:
        self._captured = True  # a dying worker may have written its traceback
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn, self._poller = None, None, None

    def _read_capture(self) -> list[str]:
        """What the worker wrote since the job was sent (usually nothing: one stat)."""
        try:
            if os.fstat(self._capture).st_size == 0:
                return []
            text = os.pread(self._capture, CAPTURE_BYTES, 0).decode("utf-8", "replace")
        except OSError:
            return []
        return [_redact(line) for line in text.splitlines() if line.strip()]

    def _connection(self) -> Connection:
        if self._proc is not None and not self._proc.is_alive():
            logger.info("decoder worker found dead (exit code %s); replaced", self._proc.exitcode)
            self._kill()  # died between jobs: not the next job's fault
        return self._conn or self._start()

    def _attempt(self, job: DecodeJob) -> DecodeResult:
        conn = self._connection()
        info = FileInfo("", len(job.data) if job.data is not None else 0)
        if self._captured:
            os.ftruncate(self._capture, 0)
        try:
            if job.recipe is not None:
                self._slot.reserve(slot_bytes(job.recipe))
            conn.send((job, job.recipe is not None))
            if self._answered(self.settings.decode_timeout_s):
                message, layout, address_space = conn.recv()
                result = self._slot.take(message, layout)
                self._after_job(result, address_space)
                return result
            reason, detail = Reason.TIMEOUT, f"over {self.settings.decode_timeout_s:g} s"
        except (EOFError, OSError, BrokenPipeError):
            if self._proc is not None:
                self._proc.join(timeout=5)
            code = self._proc.exitcode if self._proc is not None else None
            if code == MEMORY_EXIT:
                reason, detail = Reason.MEMORY, f"over {self.settings.decode_memory_mb} MB"
            else:
                reason, detail = Reason.CRASHED, f"exit code {code}"
                last = self._read_capture()
                if last:
                    detail += f": {last[-1]}"
        # the refusal carries the reason; the replacement itself is routine (INFO, `-v`)
        logger.info("decoder worker replaced: %s (%s)", reason.value, detail)
        self._kill()
        self.restarts += 1
        return DecodeResult(file=info, reason=reason, detail=detail)

    def _answered(self, timeout_s: float) -> bool:
        """Whether the worker answered (or closed its end) within ``timeout_s``."""
        assert self._poller is not None
        return bool(self._poller.poll(timeout_s * 1000))

    def _after_job(self, result: DecodeResult, address_space: int) -> None:
        output = self._read_capture()
        self._captured = bool(output)
        if output:
            logger.debug("decoder output (%d lines): %s", len(output), " | ".join(output[:5]))
        self._served += 1
        self._base_vm = self._base_vm or address_space
        limit = self.settings.decode_memory_mb * 1024 * 1024
        if address_space - self._base_vm > GROWTH_FRACTION * limit:
            logger.info("decoder worker recycled: grew to %d MB", address_space >> 20)
            self._kill()

    def decode(self, job: DecodeJob) -> DecodeResult:
        seasoned = self._proc is not None and self._served > 0
        result = self._attempt(job)
        if seasoned and result.reason == Reason.CRASHED:
            # the worker had served other jobs: try once more on a fresh one
            logger.info("retrying a job on a fresh decoder worker after %s", result.reason)
            self._kill()
            result = self._attempt(job)
        return result

    @property
    def pid(self) -> int | None:
        """The worker process's id, while one runs (started on the first job)."""
        return int(self._proc.pid) if self._proc is not None else None

    def close(self) -> None:
        self._kill()
        if self._capture >= 0:  # closed once (close may be called again)
            os.close(self._capture)
            self._capture = -1
            self._slot.close()


class DecoderPool:
    """``workers`` guarded decoder processes; :meth:`map` keeps the input order."""

    def __init__(self, settings: ImagingSettings, workers: int | None = None) -> None:
        count = workers or max(1, (os.cpu_count() or 1))
        self._all: list[DecoderWorker] = [DecoderWorker(settings) for _ in range(count)]
        self._free: list[DecoderWorker] = list(self._all)
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(max_workers=count, thread_name_prefix="decode")
        self.workers = count

    def _run(self, job: DecodeJob) -> DecodeResult:
        with self._lock:
            worker = self._free.pop()
        try:
            return worker.decode(job)
        finally:
            with self._lock:
                self._free.append(worker)

    def map(self, jobs: Iterable[DecodeJob]) -> Iterator[DecodeResult]:
        return self._threads.map(self._run, jobs)

    def decode(self, job: DecodeJob) -> DecodeResult:
        return self._run(job)

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self._all)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        for worker in self._all:
            worker.close()

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_files_guarded(
    paths: Sequence[str | Path], settings: ImagingSettings, recipe: Recipe | None = None
) -> list[DecodeResult]:
    """Decode files one after another in one short-lived guarded worker (CLI commands):
    a codec that crashes, hangs or balloons gives a refusal, not a dead process."""
    worker = DecoderWorker(settings)
    try:
        return [worker.decode(DecodeJob(path=str(path), recipe=recipe)) for path in paths]
    finally:
        worker.close()
