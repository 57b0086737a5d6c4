"""Bounded loopback load: many concurrent clients, mixed requests, zero errors, flat RSS.

RSS is read after a warm-up and after each fifth of 10k requests. ONNX Runtime's memory
arena grows until it has seen the largest image batch (16 x 3 x 480 x 480 and its
activations): measured 524 MB after 2k requests, 748 MB after 4k, then 751, 752, 754,
754 MB. Flat means: after the first fifth, RSS grows by less than 5% (+20 MB).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from indexer.pipeline.runner import BuildReport
from tests.service.conftest import TEST_MODEL
from tests.service.load import LoadResult, mixed_requests, rss_mb, run_load, server_process

pytestmark = pytest.mark.slow
CLIENTS = 32
WARMUP = 2000
TOTAL = 10_000
CHUNKS = 5


def test_load_zero_errors_and_flat_memory(built_index: tuple[Path, BuildReport]) -> None:
    index_dir, report = built_index
    total = LoadResult()
    rss: list[float] = []
    with server_process(index_dir, TEST_MODEL) as (base, pid):
        # 5% image uploads (64-768 px): each costs ~90 ms of encoder time on 2 cores even
        # with the small test model (480x480 input); text and neighbours make up the rest
        requests = mixed_requests(report.indexed, seed=1, image_share=0.05)
        warm = asyncio.run(run_load(base, requests, clients=CLIENTS, total=WARMUP))
        assert warm.statuses == {200: WARMUP}, warm.statuses
        rss.append(rss_mb(pid))
        for _ in range(CHUNKS):
            part = asyncio.run(run_load(base, requests, clients=CLIENTS, total=TOTAL // CHUNKS))
            total.statuses.update(part.statuses)
            total.seconds += part.seconds
            for kind, values in part.latencies.items():
                total.latencies.setdefault(kind, []).extend(values)
            rss.append(rss_mb(pid))
    summary = total.summary()
    summary["clients"] = CLIENTS
    summary["rss_mb"] = [round(x, 1) for x in rss]
    print("\nload:", json.dumps(summary))
    assert total.statuses == {200: TOTAL}, total.statuses
    assert rss[-1] < rss[1] * 1.05 + 20, rss
