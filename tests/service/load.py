"""A bounded load generator: concurrent async clients, mixed requests, latency percentiles.

Used by ``test_load.py`` and ``benchmarks/bench_service.py``. The server runs in its own
process (``medsearch serve``) so that its memory can be read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.service.live import free_port

Request = Callable[[httpx.AsyncClient], "asyncio.Future[httpx.Response] | object"]


@dataclass
class LoadResult:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    def summary(self) -> dict[str, object]:
        everything = [x for values in self.latencies.values() for x in values]
        out: dict[str, object] = {
            "requests": self.count,
            "errors": self.count - self.statuses.get(200, 0),
            "statuses": dict(self.statuses),
            "seconds": round(self.seconds, 2),
            "requests_per_s": round(self.count / self.seconds, 1) if self.seconds else 0.0,
            "all": percentiles(everything),
        }
        for kind, values in sorted(self.latencies.items()):
            out[kind] = percentiles(values)
        return out


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ms = np.asarray(values) * 1000
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def png_b64(size: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = (127 + 60 * np.sin(xx / (3 + seed % 7)) + 40 * np.cos(yy / 11.0)).astype(np.float64)
    img += rng.normal(0, 8, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def mixed_requests(
    n_items: int, seed: int = 0, image_share: float = 0.25
) -> Iterator[tuple[str, str, dict[str, object]]]:
    """(kind, path, json) forever: text searches, neighbours, images of mixed sizes."""
    rng = np.random.default_rng(seed)
    images = {size: [png_b64(size, s) for s in range(3)] for size in (64, 256, 768)}
    words = ["chest", "x-ray", "ct", "abdomen", "mri", "brain", "nodule", "axial", "lung"]
    while True:
        roll = rng.random()
        if roll < (1 - image_share) * 2 / 3:
            text = " ".join(rng.choice(words, size=int(rng.integers(2, 6))))
            yield "text", "/v1/search/text", {"text": text, "k": 10}
        elif roll < 1 - image_share:
            item = int(rng.integers(1, n_items + 1))
            yield "neighbors", f"/v1/items/{item}/neighbors?k=10", {}
        else:
            size = int(rng.choice(list(images)))
            yield (
                f"image_{size}",
                "/v1/search/image",
                {
                    "image": images[size][int(rng.integers(0, 3))],
                    "k": 10,
                },
            )


async def run_load(
    base: str,
    requests: Iterator[tuple[str, str, dict[str, object]]],
    *,
    clients: int,
    total: int | None = None,
    seconds: float | None = None,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    result = LoadResult()
    started = time.perf_counter()
    sent = 0

    def next_request() -> tuple[str, str, dict[str, object]] | None:
        nonlocal sent
        if total is not None and sent >= total:
            return None
        if seconds is not None and time.perf_counter() - started > seconds:
            return None
        sent += 1
        return next(requests)

    async def client(http: httpx.AsyncClient) -> None:
        while (req := next_request()) is not None:
            kind, path, body = req
            t0 = time.perf_counter()
            try:
                if body:
                    r = await http.post(path, json=body)
                else:
                    r = await http.get(path)
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            result.latencies.setdefault(kind, []).append(time.perf_counter() - t0)
            result.statuses[status] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits, headers=headers) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    result.seconds = time.perf_counter() - started
    return result


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def server_process(
    index_dir: Path, model_dir: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """``medsearch serve`` in a subprocess; yields (base URL, pid)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "service", "serve", "--index", str(index_dir),
            "--model", str(model_dir), "--port", str(port),
        ],
        env={**os.environ, "MEDSEARCH_PROVIDER": "cpu", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()[-2000:] if proc.stderr else "")
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError("server did not become ready")
        yield base, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
