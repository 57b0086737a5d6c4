"""The local engine: the pipeline's stages run concurrently on one host.

::

    reader ──reads──▶ fetchers ──jobs──▶ preparers ──prepared──▶ embedder ──encoded──▶ writer
    1 thread          io_threads         1 thread per             1 thread             this
    (list, skip       (archive members,  decoder process          (encoder runs of     thread
     what the         PACS instances)    (decode, render,          --batch-size)        (one commit
     catalog has)                        preprocess)                                    per batch)

Every arrow is a bounded :class:`~indexer.pipeline.channels.Channel`: a slow stage makes
the ones before it wait, so memory stays bounded on any archive (at most a few batches of
480x480 inputs are in flight). Items complete out of order; the catalog is the truth, and
a killed run loses only what was not committed (the next run reads it again).

Items travel in small lists (up to :data:`CHUNK_ITEMS`, and fetched bytes up to
:data:`CHUNK_BYTES` per list): each hand-off between threads costs a wake-up and a few
lock operations in this process (lists, with the writer's executemany, took its CPU per
image outside the encoder from ~1.0 to ~0.85 ms in the benchmark). What a source has listed never
waits for a full list longer than :data:`CHUNK_WAIT_S` (a source that stalls between
items: a PACS listing, a watched folder), and a decoder's results go on as a list when
its list of jobs is done.

Each stage reports its busy time (time in its own work, not waiting on a queue); with the
number of threads it ran on, that gives its utilisation, and the busiest stage is the one
that limits the build. Queue depths (in lists) are sampled at every commit.

The encoder runs a batch as soon as it is full, and also whenever nothing else is waiting
for it: then it would only idle while a batch fills. When the encoder is the slowest
stage (a CPU host) items pile up while it runs and its batches are full; when it is not
(a GPU host fed by decoders), smaller batches cost no throughput.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.imaging.guard import DecodeJob
from indexer.imaging.types import DecodeResult
from indexer.pipeline.channels import Channel, Stopped
from indexer.pipeline.embedder import Embedder, Embeddings
from indexer.pipeline.items import ReadItem
from indexer.pipeline.preparer import Prepared, Preparer
from indexer.pipeline.writer import Writer

logger = logging.getLogger(__name__)

FLUSH_S = 0.5  # the embedder runs a partial batch when nothing arrived for this long
SWITCH_INTERVAL_S = 0.0005
"""How long a thread may hold the GIL while another waits (Python's default is 5 ms). A
preparer thread whose worker has answered must get the GIL at once to hand the worker its
next job; at 5 ms behind the embedder's normalisation, each decoder process idled ~5 ms a
job (decoders ran at 60% of their rate in the benchmark)."""
REORDER_BATCHES = 4  # items wait for a late one up to this many batches, then pass it
CHUNK_ITEMS = 8  # items per hand-off between stages
CHUNK_BYTES = 16 << 20  # fetched bytes (archive members, PACS instances) per hand-off
CHUNK_WAIT_S = 0.05  # the reader hands on a partial list when its source was this slow
Job = tuple[int, ReadItem, DecodeJob | DecodeResult]
Encoded = tuple[list[Prepared], Embeddings]
OnCommit = Callable[[list[Prepared], tuple[int, int, int]], None]


@dataclass
class StageStats:
    """Busy seconds and threads per stage, queue depths, and the limiting stage."""

    busy_s: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU of this process's threads
    threads: dict[str, int] = field(default_factory=dict)
    depths: dict[str, list[int]] = field(default_factory=dict)
    wall_s: float = 0.0
    process_cpu_s: float = 0.0  # this process's CPU time (all threads) while the stages ran
    commits: list[tuple[float, int]] = field(default_factory=list)  # (seconds, images)

    def steady_images_per_s(self) -> float | None:
        """Images per second from the first commit to the last: the rate once the stages
        are full, without worker start-up and the first batch's fill."""
        if len(self.commits) < 3:
            return None
        (first, _), (last, _) = self.commits[0], self.commits[-1]
        images = sum(n for _, n in self.commits[1:])
        return images / (last - first) if last > first else None

    def utilisation(self) -> dict[str, float]:
        wall = max(self.wall_s, 1e-9)
        return {k: v / (wall * max(self.threads.get(k, 1), 1)) for k, v in self.busy_s.items()}

    def limiting_stage(self) -> str | None:
        shares = self.utilisation()
        return max(shares, key=lambda k: shares[k]) if shares else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "busy_s": {k: round(v, 3) for k, v in self.busy_s.items()},
            "cpu_s": {k: round(v, 3) for k, v in self.cpu_s.items()},
            "threads": self.threads,
            "utilisation": {k: round(v, 3) for k, v in self.utilisation().items()},
            "limiting_stage": self.limiting_stage(),
            "wall_s": round(self.wall_s, 3),
            "steady_images_per_s": _round(self.steady_images_per_s()),
            "first_commit_s": _round(self.commits[0][0]) if self.commits else None,
            "last_commit_s": _round(self.commits[-1][0]) if self.commits else None,
            "process_cpu_s": round(self.process_cpu_s, 3),
            "queue_depth": {
                name: {"mean": round(float(np.mean(d)), 2) if d else 0.0, "max": max(d or [0])}
                for name, d in self.depths.items()
            },
        }


def _age(since: float) -> float:
    return time.perf_counter() - since


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class _Reorder:
    """Items back in source order, so that a rerun commits the same way (e.g. which of
    several files of one SOP Instance UID is indexed and which are duplicates). A late item
    holds back at most ``window`` others; past that they go on without it, and it follows
    when it comes: memory stays bounded whatever a straggler does."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._next = 0
        self._held: dict[int, Prepared] = {}

    @property
    def waiting(self) -> int:
        return len(self._held)

    def add(self, seq: int, item: Prepared) -> list[Prepared]:
        if seq < self._next:  # late: the others went on
            return [item]
        self._held[seq] = item
        out = []
        while self._next in self._held:
            out.append(self._held.pop(self._next))
            self._next += 1
        if len(self._held) > self.window:
            out += self.drain(everything=False)
        return out

    def drain(self, *, everything: bool) -> list[Prepared]:
        """Everything held (at the end, or when idle), or what exceeds the window."""
        keep = 0 if everything else self.window
        out = []
        for seq in sorted(self._held)[: max(len(self._held) - keep, 0)]:
            out.append(self._held.pop(seq))
            self._next = max(self._next, seq + 1)
        return out


class _Threads:
    """Stage threads that stop the whole pipeline when one of them fails."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.errors: list[BaseException] = []
        self.cpu_s: dict[str, float] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, stage: str, body: Callable[[], None], output: Channel[Any]) -> None:
        def run() -> None:
            cpu = time.thread_time()
            try:
                body()
                output.close()
            except Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
                self.errors.append(exc)
                self.stop.set()
            finally:
                with self._lock:
                    used = time.thread_time() - cpu
                    self.cpu_s[stage] = self.cpu_s.get(stage, 0.0) + used

        name = f"medsearch-{stage}-{len(self._threads)}"
        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()


def run_local(
    items: Iterable[ReadItem],
    fetch: Callable[[ReadItem], DecodeJob | DecodeResult],
    preparers: Sequence[Preparer],
    embedder: Embedder,
    writer: Writer,
    *,
    io_threads: int,
    on_commit: OnCommit,
) -> StageStats:
    """Run the stages until ``items`` is exhausted and every batch is committed."""
    stop = threading.Event()
    batch = embedder.batch_size
    chunks = max(1, batch // CHUNK_ITEMS)
    reads: Channel[list[tuple[int, ReadItem]]] = Channel("reads", 2 * io_threads, 1, stop)
    jobs: Channel[list[Job]] = Channel("jobs", 2 * len(preparers), io_threads, stop)
    prepared: Channel[list[tuple[int, Prepared]]] = Channel(
        "prepared", 4 * chunks, len(preparers), stop
    )
    encoded: Channel[Encoded] = Channel("encoded", 2, 1, stop)
    stats = StageStats(threads={"read": 1, "fetch": io_threads, "prepare": len(preparers)})
    stats.threads.update(embed=1, write=1)
    clock = {"read": 0.0, "fetch": 0.0}
    lock = threading.Lock()
    threads = _Threads(stop)
    started, cpu = time.perf_counter(), time.process_time()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)

    def read() -> None:
        source = iter(items)
        chunk: list[tuple[int, ReadItem]] = []
        chunk_lock = threading.Lock()  # the chunk is shared with the flusher
        listed = threading.Event()
        since = 0.0  # when the chunk got its first item

        def flush_slow() -> None:
            """A source that stalls (a PACS listing, a watched folder) must not hold back
            what it has listed: a chunk older than CHUNK_WAIT_S goes on as it is."""
            nonlocal chunk
            try:
                while not listed.wait(CHUNK_WAIT_S):
                    with chunk_lock:
                        late = chunk if chunk and _age(since) >= CHUNK_WAIT_S else []
                        if late:
                            chunk = []
                    if late:
                        reads.put(late)
            except Stopped:
                pass

        flusher = threading.Thread(target=flush_slow, name="medsearch-read-flush", daemon=True)
        flusher.start()
        try:
            for seq in itertools.count():
                t = time.perf_counter()
                item = next(source, None)
                clock["read"] += time.perf_counter() - t
                if item is None:
                    break
                with chunk_lock:
                    if not chunk:
                        since = time.perf_counter()
                    chunk.append((seq, item))
                    full = chunk if len(chunk) >= CHUNK_ITEMS else []
                    if full:
                        chunk = []
                if full:
                    reads.put(full)
        finally:
            listed.set()
            flusher.join()
        if chunk:
            reads.put(chunk)

    def fetcher() -> None:
        for chunk in reads:
            out: list[Job] = []
            size = 0
            for seq, item in chunk:
                t = time.perf_counter()
                job = fetch(item)
                with lock:
                    clock["fetch"] += time.perf_counter() - t
                out.append((seq, item, job))
                size += len(job.data or b"") if isinstance(job, DecodeJob) else 0
                if size >= CHUNK_BYTES:  # bytes in flight stay bounded
                    jobs.put(out)
                    out, size = [], 0
            if out:
                jobs.put(out)

    def preparer(stage: Preparer) -> Callable[[], None]:
        def body() -> None:
            for chunk in jobs:
                prepared.put([(seq, stage(item, job)) for seq, item, job in chunk])

        return body

    def embed() -> None:
        order = _Reorder(REORDER_BATCHES * batch)
        pending: list[Prepared] = []
        images = 0
        while True:
            got = prepared.get(timeout=FLUSH_S if pending or order.waiting else None)
            if got is not None:
                ready = [item for seq, one in got for item in order.add(seq, one)]
            else:
                ready = order.drain(everything=prepared.ended)
            for item in ready:
                pending.append(item)
                images += len(item.result.images) if item.result.ok else 0
                if images >= batch or len(pending) >= 4 * batch:  # a full encoder run
                    encoded.put((pending, embedder(pending)))
                    pending, images = [], 0
            # nothing else is waiting: the encoder would idle until a batch fills, so it
            # runs what it has (while it runs, the next batch gathers: when the encoder is
            # the slowest stage its batches are full, when it is not they need not be)
            if pending and (got is None or prepared.depth() == 0):
                encoded.put((pending, embedder(pending)))
                pending, images = [], 0
            if got is None and prepared.ended and not order.waiting:
                return

    threads.start("read", read, reads)
    for _ in range(io_threads):
        threads.start("fetch", fetcher, jobs)
    for stage in preparers:
        threads.start("prepare", preparer(stage), prepared)
    threads.start("embed", embed, encoded)
    channels: list[Channel[Any]] = [reads, jobs, prepared, encoded]
    write_cpu = time.thread_time()
    try:
        for done, embeddings in encoded:
            counts = writer(done, embeddings)
            images = sum(len(p.result.images) for p in done if p.result.ok)
            stats.commits.append((time.perf_counter() - started, images))
            for channel in channels:
                stats.depths.setdefault(channel.name, []).append(channel.depth())
            on_commit(done, counts)
    except Stopped:
        pass
    except BaseException:
        stop.set()
        threads.join()
        raise
    finally:
        sys.setswitchinterval(interval)
    threads.join()
    if threads.errors:
        raise threads.errors[0]
    stats.wall_s = time.perf_counter() - started
    stats.process_cpu_s = time.process_time() - cpu
    stats.cpu_s = {**threads.cpu_s, "write": time.thread_time() - write_cpu}
    stats.busy_s = {
        **clock,
        "prepare": sum(p.busy_s for p in preparers),
        "embed": embedder.busy_s,
        "write": writer.busy_s,
    }
    return stats
