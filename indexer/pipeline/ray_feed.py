"""The driver's items into Ray Data, as they are listed: a bounded queue and a datasource
that reads it.

Ray Data reads from files and tables; here the input is a stream that only the driver
can produce (the sources' items less what the catalog has seen, and the bytes of those
the workers cannot read). A :class:`Feeder` thread on the driver lists the items, fetches
what must be fetched (``io_threads`` at a time, like the local engine's fetchers), and
puts them in chunks into a :class:`ray.util.queue.Queue` of a few chunks (the
back-pressure: when the pipeline falls behind, the feeder waits). :class:`QueueSource`
is the dataset's one read task, which takes the chunks off the queue in order until the
end marker. Memory stays bounded on any archive, as in the local engine.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
from ray.data import DataContext
from ray.data.block import Block, BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.util.queue import Empty, Full, Queue

from indexer.pipeline.items import ReadItem
from indexer.pipeline.ray_rows import JOB_COLUMNS, pack, to_block

logger = logging.getLogger(__name__)

_POLL_S = 0.5
Ship = Callable[[int, ReadItem], dict[str, Any]]


class QueueSource(Datasource):
    """One read task that yields the queue's chunks (one-row Arrow tables: a packed batch
    of jobs each) until ``None``."""

    def __init__(self, queue: Queue) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._queue = queue

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: int | None = None,
        data_context: DataContext | None = None,
    ) -> list[ReadTask]:
        queue = self._queue

        def read() -> Iterator[Block]:
            while True:
                try:
                    chunk = queue.get(block=True, timeout=_POLL_S)
                except Empty:
                    continue
                if chunk is None:
                    return
                yield ray.get(chunk[0])  # the ref is wrapped in a list: fetched only here

        meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(read, meta)]


class Feeder:
    """The driver thread that lists, fetches and enqueues the items (``seq`` in order)."""

    def __init__(
        self,
        items: Iterable[ReadItem],
        ship: Ship,
        *,
        chunk: int,
        io_threads: int,
        depth: int,
    ) -> None:
        self.queue = Queue(maxsize=depth, actor_options={"num_cpus": 0})
        self.reads: dict[int, ReadItem] = {}  # in flight: taken out as items complete
        self.errors: list[BaseException] = []
        self.read_s = 0.0  # time in the listing (reader stage)
        self.fetch_s = 0.0  # time fetching, summed over the I/O threads
        self._items, self._ship = items, ship
        self._chunk, self._io_threads = chunk, io_threads
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="medsearch-feed", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _timed_ship(self, job: tuple[int, ReadItem]) -> dict[str, Any]:
        started = time.perf_counter()
        row = self._ship(*job)
        with self._lock:
            self.fetch_s += time.perf_counter() - started
        return row

    def _chunks(self) -> Iterator[list[tuple[int, ReadItem]]]:
        source = iter(enumerate(self._items))
        while True:
            started = time.perf_counter()
            chunk = list(itertools.islice(source, self._chunk))
            self.read_s += time.perf_counter() - started
            if not chunk:
                return
            yield chunk

    def _run(self) -> None:
        try:
            with ThreadPoolExecutor(self._io_threads, thread_name_prefix="medsearch-fetch") as io:
                for chunk in self._chunks():
                    rows = list(io.map(self._timed_ship, chunk))
                    self.reads.update(chunk)
                    jobs = pack({name: [row[name] for row in rows] for name in JOB_COLUMNS})
                    if not self._put([ray.put(to_block([jobs]))]):
                        return
        except BaseException as exc:  # noqa: BLE001 - re-raised by the driver's main thread
            self.errors.append(exc)
        finally:
            self._put(None)  # the pipeline drains what it has and ends

    def _put(self, chunk: list[Any] | None) -> bool:
        while not self._stop.is_set():
            try:
                self.queue.put(chunk, block=True, timeout=_POLL_S)
                return True
            except Full:
                continue
        return False

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.queue.shutdown(force=True)
