"""A memory budget for decodes in flight: the bytes that uploads waiting for a decoder
worker, and the model inputs that come back, may hold in the server at once.

The pixel limit bounds one image; this bounds many. A request that finds no room waits
up to ``wait_s`` for it, then gets 503 with ``Retry-After`` instead of growing the
process. One job larger than the whole budget runs alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.errors import ServiceError

HAND_OVER_BYTES = 480 * 480 * 3
"""What a worker hands back per image at most: the model's input (or a smaller thumbnail)."""


class DecodeBudget:
    def __init__(self, capacity: int, wait_s: float = 5.0) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self.used = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        size = min(size, self.capacity)
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.used + size <= self.capacity),
                    self.wait_s,
                )
            except TimeoutError:
                raise ServiceError(
                    503,
                    "overloaded",
                    "too many images are being decoded; retry shortly",
                    {"Retry-After": "1"},
                ) from None
            self.used += size
        try:
            yield
        finally:
            async with self._changed:
                self.used -= size
                self._changed.notify_all()
