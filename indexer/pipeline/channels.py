"""Bounded queues between pipeline stages, with end-of-stream and shutdown.

A :class:`Channel` carries items from one stage's threads to the next stage's. Its bound
is the back-pressure: a producer whose consumers fall behind waits, so memory stays
bounded whatever the size of the archive. Each producer calls :meth:`Channel.close` when
it is done; when the last one has, consumers see the end of the stream. A stage that
fails sets the shared ``stop`` event: every blocked ``put`` and ``get`` then raises
:class:`Stopped`, so no thread waits forever on a queue that nobody serves.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_POLL_S = 0.1


class Stopped(Exception):
    """The pipeline is shutting down (another stage failed)."""


class _End:
    pass


_END = _End()


class Channel(Generic[T]):
    def __init__(self, name: str, size: int, producers: int, stop: threading.Event) -> None:
        self.name = name
        self.size = size
        self._queue: queue.Queue[T | _End] = queue.Queue(maxsize=size)
        self._producers = producers
        self._lock = threading.Lock()
        self._stop = stop
        self._ended = False

    def put(self, item: T | _End) -> None:
        while True:
            if self._stop.is_set():
                raise Stopped
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """One producer is done; after the last one, consumers see the end."""
        with self._lock:
            self._producers -= 1
            last = self._producers == 0
        if last:
            self.put(_END)

    def get(self, timeout: float | None = None) -> T | None:
        """The next item; ``None`` at the end of the stream, or when ``timeout`` passes
        with nothing to take (then :attr:`ended` tells which)."""
        waited = 0.0
        while True:
            if self._stop.is_set():
                raise Stopped
            if self._ended:
                return None
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                waited += _POLL_S
                if timeout is not None and waited >= timeout:
                    return None
                continue
            if isinstance(item, _End):
                self._ended = True
                self._queue.put(item)  # for the other consumers
                return None
            return item

    @property
    def ended(self) -> bool:
        return self._ended

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self.get()
            if item is None:
                return
            yield item

    def depth(self) -> int:
        return self._queue.qsize()
