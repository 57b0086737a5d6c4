"""A budget for decodes in flight: the bytes that uploads waiting for a decoder worker,
and the model inputs that come back, may hold in the server at once, and how many decodes
may wait at all.

The pixel limit bounds one image; this bounds many. Bytes bound memory; the number of
decodes admitted (:data:`DECODES_PER_WORKER` per decoder process) bounds how long an
admitted request can queue: a burst of small files that decode slowly (a 40-megapixel PNG
of 40 KB) is refused early instead of holding every client for minutes. A request that
finds no room waits up to ``wait_s`` for it, then gets 503 with ``Retry-After``. One job
larger than the whole budget runs alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.errors import ServiceError

DECODES_PER_WORKER = 4


class DecodeBudget:
    def __init__(self, capacity: int, jobs: int, wait_s: float = 5.0) -> None:
        self.capacity = capacity
        self.jobs = jobs
        self.wait_s = wait_s
        self.used = 0
        self.running = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        size = min(size, self.capacity)
        async with self._changed:
            try:  # asyncio.timeout, not wait_for: on Python 3.11, wait_for drops a
                # cancellation that comes as the wait ends, and the cancelled request
                # would take its place and decode anyway
                async with asyncio.timeout(self.wait_s):
                    await self._changed.wait_for(
                        lambda: self.used + size <= self.capacity and self.running < self.jobs
                    )
            except TimeoutError:
                raise ServiceError(
                    503,
                    "overloaded",
                    "too many images are being decoded; retry shortly",
                    {"Retry-After": "1"},
                ) from None
            self.used += size
            self.running += 1
        try:
            yield
        finally:
            async with self._changed:
                self.used -= size
                self.running -= 1
                self._changed.notify_all()
