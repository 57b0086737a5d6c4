"""The decode budget: bytes of decodes in flight are bounded; a request that finds no room
waits, then gets 503 with Retry-After, never a 500 or unbounded growth."""

from __future__ import annotations

import asyncio
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.budget import DecodeBudget
from service.errors import ServiceError
from tests.service.conftest import settings_for
from tests.service.live import serve


def test_a_full_budget_waits_then_refuses() -> None:
    async def scenario() -> list[str]:
        budget = DecodeBudget(capacity=10, jobs=8, wait_s=0.2)
        events: list[str] = []
        async with budget.reserve(8):
            try:
                async with budget.reserve(8):
                    events.append("second ran")
            except ServiceError as exc:
                assert exc.status == 503 and exc.headers == {"Retry-After": "1"}
                events.append("refused")
            async with budget.reserve(2):  # what fits goes on at once
                events.append("small ran")

        async def later() -> None:
            async with budget.reserve(8):
                events.append("waited and ran")

        async with budget.reserve(8):
            waiting = asyncio.create_task(later())
            await asyncio.sleep(0.05)
        await waiting
        async with budget.reserve(50):  # larger than the budget: runs alone
            events.append("oversize ran alone")
        assert budget.used == 0 and budget.running == 0
        one = DecodeBudget(capacity=100, jobs=1, wait_s=0.2)
        async with one.reserve(1):
            try:
                async with one.reserve(1):
                    events.append("second job ran")
            except ServiceError:
                events.append("second job refused")
        return events

    assert asyncio.run(scenario()) == [
        "refused", "small ran", "waited and ran", "oversize ran alone", "second job refused",
    ]  # fmt: skip


@pytest.mark.slow
def test_uploads_beyond_the_budget_get_503_never_500(
    built_index: tuple[Path, object], tmp_path: Path
) -> None:
    """Large images that compress to almost nothing (a 6300x6300 PNG of ~40 KB)."""
    rng = np.random.default_rng(5)
    big = np.full((6300, 6300), 90, dtype=np.uint8)
    big[::97, :] = rng.integers(0, 255, size=(65, 6300), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG", optimize=True)
    data = buf.getvalue()
    app = create_app(settings_for(built_index[0], workers=1, decode_budget_mb=8))

    def upload(base: str) -> httpx.Response:
        files = {"file": ("big.png", io.BytesIO(data), "image/png")}
        form = {"options": json.dumps({"k": 3})}
        return httpx.post(f"{base}/v1/search/image", files=files, data=form, timeout=300)

    with serve(app) as base, ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: upload(base), range(24)))
        after = upload(base)
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) > 0 and codes.count(200) > 0, codes
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.headers["retry-after"] == "1" and refused.json()["error"] == "overloaded"
    assert after.status_code == 200
