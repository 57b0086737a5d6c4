"""Decoding untrusted files in worker processes with a time and memory budget per file.

A crafted or damaged file can make a decoder hang, allocate gigabytes or crash the process
(codecs are C libraries). Each :class:`DecoderWorker` is a separate process with an
address-space limit (``RLIMIT_AS``, ``decode_memory_mb``); the parent waits at most
``decode_timeout_s`` for its answer. A worker that runs over time is killed and replaced
(reason ``decode timeout``); one that dies is replaced (``decoder crashed``); an
allocation over the limit fails inside the worker (``decode memory limit``). The batch
goes on in every case. :class:`DecoderPool` runs several workers from threads.

Workers are started with ``spawn``: they share nothing with a parent that may hold ONNX
Runtime threads or open databases.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from indexer.imaging.decode import decode_bytes, decode_path
from indexer.imaging.types import DecodeResult, FileInfo, Reason
from indexer.settings import ImagingSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeJob:
    """A file to decode: a path on disk, or bytes (archive members)."""

    path: str | None = None
    data: bytes | None = None


def _limit_memory(megabytes: int) -> None:
    try:
        import resource

        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError) as exc:  # not on this platform
        logging.getLogger(__name__).warning("no memory limit for decoders: %s", exc)


def _serve(conn: Connection, settings_json: str) -> None:
    """Worker main loop: decode jobs until the pipe closes."""
    settings = ImagingSettings.model_validate_json(settings_json)
    _limit_memory(settings.decode_memory_mb)
    while True:
        try:
            job: DecodeJob = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if job.path is not None:
                result = decode_path(job.path, settings)
            else:
                result = decode_bytes(job.data or b"", settings)
        except MemoryError:
            result = DecodeResult(file=FileInfo("", 0), reason=Reason.MEMORY)
        except OSError as exc:
            detail = exc.strerror or type(exc).__name__
            result = DecodeResult(file=FileInfo("", 0), reason=Reason.CORRUPT, detail=detail)
        try:
            conn.send(result)
        except MemoryError:
            conn.send(DecodeResult(file=result.file, reason=Reason.MEMORY))


class DecoderWorker:
    """One decoder process, restarted after a timeout or a crash."""

    def __init__(self, settings: ImagingSettings) -> None:
        self.settings = settings
        self._settings_json = settings.model_dump_json()
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self.restarts = 0

    def _start(self) -> Connection:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_serve, args=(child, self._settings_json), daemon=True, name="medsearch-decoder"
        )
        self._proc.start()
        child.close()
        self._conn = parent
        return parent

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

    def decode(self, job: DecodeJob) -> DecodeResult:
        conn = self._conn or self._start()
        info = FileInfo("", len(job.data) if job.data is not None else 0)
        try:
            conn.send(job)
            if conn.poll(self.settings.decode_timeout_s):
                result: DecodeResult = conn.recv()
                return result
            reason, detail = Reason.TIMEOUT, f"over {self.settings.decode_timeout_s:g} s"
        except (EOFError, OSError, BrokenPipeError):
            code = self._proc.exitcode if self._proc is not None else None
            reason, detail = Reason.CRASHED, f"exit code {code}"
        logger.warning("decoder worker replaced: %s (%s)", reason.value, detail)
        self._kill()
        self.restarts += 1
        return DecodeResult(file=info, reason=reason, detail=detail)

    @property
    def pid(self) -> int | None:
        """The worker process's id, while one runs (started on the first job)."""
        return int(self._proc.pid) if self._proc is not None else None

    def close(self) -> None:
        self._kill()


class DecoderPool:
    """``workers`` guarded decoder processes; :meth:`map` keeps the input order."""

    def __init__(self, settings: ImagingSettings, workers: int | None = None) -> None:
        count = workers or max(1, (os.cpu_count() or 1))
        self._free: list[DecoderWorker] = [DecoderWorker(settings) for _ in range(count)]
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
        return sum(w.restarts for w in self._free)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        for worker in self._free:
            worker.close()

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_files_guarded(
    paths: Sequence[str | Path], settings: ImagingSettings
) -> list[DecodeResult]:
    """Decode files one after another in one short-lived guarded worker (CLI commands):
    a codec that crashes, hangs or balloons gives a refusal, not a dead process."""
    worker = DecoderWorker(settings)
    try:
        return [worker.decode(DecodeJob(path=str(path))) for path in paths]
    finally:
        worker.close()
