"""The micro-batcher on a real event loop and thread pool: requests share encoder runs,
a full queue is refused at once, a failing run fails every request in it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.batcher import MicroBatcher, Overloaded


def test_concurrent_requests_share_runs() -> None:
    runs: list[list[int]] = []

    def double(items: Sequence[int]) -> list[int]:
        runs.append(list(items))
        return [2 * i for i in items]

    async def main() -> list[int]:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(double, pool, window_ms=50, max_batch=4, queue_size=64)
            batcher.start()
            try:
                return list(await asyncio.gather(*(batcher.submit(i) for i in range(10))))
            finally:
                await batcher.stop()

    assert asyncio.run(main()) == [2 * i for i in range(10)]
    assert sorted(i for run in runs for i in run) == list(range(10))
    assert max(len(run) for run in runs) == 4  # never more than max_batch
    assert len(runs) == 3  # 4 + 4 + 2: they waited for each other within the window


def test_full_queue_is_refused_at_once() -> None:
    release = threading.Event()

    def blocked(items: Sequence[int]) -> list[int]:
        release.wait(10)
        return list(items)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(blocked, pool, window_ms=0, max_batch=1, queue_size=1)
            batcher.start()
            first = asyncio.ensure_future(batcher.submit(1))  # taken by the worker, blocks
            await asyncio.sleep(0.1)
            assert batcher.depth == 0 and not first.done()
            second = asyncio.ensure_future(batcher.submit(2))  # waits in the queue
            await asyncio.sleep(0.05)
            assert batcher.depth == 1
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(Overloaded):
                await batcher.submit(3)
            assert loop.time() - started < 0.1
            release.set()
            assert await first == 1
            assert await second == 2
            await batcher.stop()

    asyncio.run(main())


def test_a_failed_run_fails_each_of_its_requests_and_the_worker_goes_on() -> None:
    def fragile(items: Sequence[int]) -> list[int]:
        if 0 in items:
            raise ValueError("bad batch")
        return list(items)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(fragile, pool, window_ms=30, max_batch=8, queue_size=8)
            batcher.start()
            results = await asyncio.gather(
                batcher.submit(0), batcher.submit(5), return_exceptions=True
            )
            assert all(isinstance(r, ValueError) for r in results)
            assert await batcher.submit(7) == 7
            await batcher.stop()

    asyncio.run(main())
