"""Micro-batching: concurrent requests share one encoder run.

Requests are queued; a worker task takes the first, waits up to ``window_ms`` for more
(at most ``max_batch``), and runs the batch in a bounded executor off the event loop. A
full queue is refused at once (:class:`Overloaded`, a 503 with ``Retry-After``) instead of
letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(Exception):
    """The queue is full."""


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R]],
        executor: Executor,
        *,
        window_ms: float,
        max_batch: int,
        queue_size: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._fn = fn
        self._executor = executor
        self._window = window_ms / 1000.0
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue(queue_size)
        self._on_batch = on_batch
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise Overloaded from None
        return await future

    async def _collect(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self._window
        while len(batch) < self._max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                while len(batch) < self._max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                break
            try:  # not wait_for, which may drop a cancellation (stop()) on Python 3.11
                async with asyncio.timeout(remaining):
                    batch.append(await self._queue.get())
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not live:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self._fn, [item for item, _ in live]
                )
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            if self._on_batch is not None:
                self._on_batch(len(live), time.perf_counter() - started)
            for (_, fut), result in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
