"""Server memory under concurrent uploads of a small PNG that decodes huge (issue 17 item 4).

    python benchmarks/bench_upload_memory.py [--concurrency 64] [--excess 128]
        [--excess-budgets 8[,256]] [--json out.json]

A 6300x6300 grey PNG (under the 40 Mpx limit) compresses to ~52 KB and decodes to 119 MB
of RGB. Target: ``--concurrency`` (64) such uploads at once grow the server process by
< 500 MB. Decoder workers hand back only the model's input (480x480) and
``MEDSEARCH_DECODE_BUDGET_MB`` bounds the bytes of decodes in flight.

A real server (``python -m service serve``, test model, an index of pydicom's CT_small and
MR_small built with the CLI) first takes one unmeasured burst of the baseline input, so
that ONNX Runtime's memory arena has grown to full micro-batches (a one-time cost set by
``MEDSEARCH_MAX_BATCH``, not by the uploads; printed as "cold start"). Then, measured
from the same warm state:

1. baseline: CT_small rendered to a 128x128 PNG, ``--concurrency`` uploads at once;
2. hostile: the 6300x6300 PNG, ``--concurrency`` uploads at once;
3. excess: for each budget in ``--excess-budgets`` (MB), a fresh server with that
   ``MEDSEARCH_DECODE_BUDGET_MB`` takes ``--excess`` hostile uploads at once: requests that
   find no room in the budget wait, then get 503 with ``Retry-After``; those admitted
   wait for a decoder.

In 1 and 2 the clients behave as a viewer does: a 503 with ``Retry-After`` is sent again
after that many seconds (at most :data:`MAX_RETRIES` times), so every upload is answered
200 in the end and the server's growth covers all of them (the server admits at most 4
decodes per decoder process and sheds the rest). In 3 they do not retry: the burst shows
the shedding itself.

Each burst is a multipart POST /v1/search/image per client, all started together, while a
probe sends a text search every second (its slowest answer shows whether other traffic
waits behind the decodes). The server's VmRSS is sampled every 20 ms; growth = sampled
peak - RSS before the burst (VmHWM is the process lifetime's peak, shown for reference).
Decoder workers (the server's ``spawn`` children) are sampled likewise and reported apart,
since each is bounded by its own ``MEDSEARCH_DECODE_MEMORY_MB`` address-space limit;
"server+workers" is the growth of their sum at one instant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.service.live import free_port

ROOT = Path(__file__).resolve().parents[1]
TEST_MODEL = ROOT / "tests" / "data" / "test_model"
HOSTILE_SIDE = 6300
TARGET_GROWTH_MB = 500.0
SAMPLE_S = 0.02
REQUEST_TIMEOUT_S = 300.0
MAX_RETRIES = 100  # 503s with Retry-After a client of bursts 1 and 2 sends again


# -- inputs
def testdata(name: str) -> Path:
    import pydicom.data

    path = pydicom.data.get_testdata_file(name)
    if not isinstance(path, str):
        raise FileNotFoundError(f"pydicom test file {name}")
    return Path(path)


def hostile_png() -> bytes:
    """6300x6300 8-bit grey, constant but for one square: ~52 KB, 39.7 Mpx. (Deflate
    cannot shrink 8-bit rows below ~1/1000: ~37 KB takes a lower bit depth.)"""
    n = HOSTILE_SIDE
    pixels = np.full((n, n), 128, np.uint8)
    pixels[n // 2 - 400 : n // 2 + 400, n // 2 - 400 : n // 2 + 400] = 200
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def baseline_png(ct: Path) -> bytes:
    """CT_small rendered by the project's own path, saved as an 8-bit PNG."""
    from indexer.imaging.decode import decode_path
    from indexer.settings import ImagingSettings

    rendered = decode_path(ct, ImagingSettings()).images[0].pixels[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(rendered).save(buf, format="PNG")
    return buf.getvalue()


# -- /proc
def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS:") / 1024


def hwm_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM:") / 1024


def decoder_workers(server: int) -> list[int]:
    """The server's ``spawn`` children (decoder workers, not the resource tracker)."""
    children: list[int] = []
    for task in Path(f"/proc/{server}/task").glob("*/children"):
        try:
            children += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    workers = []
    for pid in children:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(pid)
    return workers


class Sampler:
    """Samples the server's RSS (and its workers') in a thread while a burst runs."""

    def __init__(self, server: int) -> None:
        self.server = server
        self.peak_mb = 0.0
        self.workers_peak_mb = 0.0  # one worker, largest seen
        self.workers_sum_peak_mb = 0.0  # all workers at one instant
        self.tree_peak_mb = 0.0  # server + workers at one instant
        self.worker_pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        workers: list[int] = []
        rescan = 0.0
        while not self._stop.is_set():
            own = rss_mb(self.server)
            self.peak_mb = max(self.peak_mb, own)
            if time.monotonic() >= rescan:  # workers are replaced when they grow or die
                workers, rescan = decoder_workers(self.server), time.monotonic() + 0.2
                self.worker_pids.update(workers)
            sizes = [rss_mb(pid) for pid in workers]
            self.workers_peak_mb = max(self.workers_peak_mb, *sizes, 0.0)
            self.workers_sum_peak_mb = max(self.workers_sum_peak_mb, sum(sizes))
            self.tree_peak_mb = max(self.tree_peak_mb, own + sum(sizes))
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- server
@contextmanager
def server(
    index: Path,
    log: Path,
    env: dict[str, str],
    headers: dict[str, str] | None = None,
    *,
    verbose: bool = False,
) -> Iterator[tuple[str, int]]:
    """``python -m service serve`` on loopback; yields (base URL, pid). Its log goes to a
    file: an undrained pipe would block a server that logs much. ``headers`` for /readyz
    on a server that needs a key; ``verbose`` logs at INFO (worker replacements)."""
    port = free_port()
    command = [
        sys.executable, "-m", "service", *(["-v"] if verbose else []), "serve",
        "--index", str(index), "--model", str(TEST_MODEL), "--port", str(port),
    ]  # fmt: skip
    full_env = {
        **os.environ,
        "MEDSEARCH_PROVIDER": "cpu",
        "MEDSEARCH_INTRA_OP_THREADS": "1",
        **env,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            env=full_env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready in 120 s")
            try:
                if httpx.get(f"{base}/readyz", timeout=2, headers=headers).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.terminate()  # uvicorn shuts down on SIGTERM, closing the decoder pool
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# -- bursts
@dataclass
class Burst:
    input: str
    file_bytes: int
    concurrency: int
    budget_mb: int
    before_mb: float = 0.0
    peak_mb: float = 0.0
    after_mb: float = 0.0
    hwm_mb: float = 0.0
    workers_peak_mb: float = 0.0
    workers_sum_peak_mb: float = 0.0
    workers_seen: int = 0
    tree_before_mb: float = 0.0
    tree_peak_mb: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    retry_after: int = 0
    retries: bool = True  # clients send a 503 with Retry-After again
    seconds: float = 0.0
    latency_s: tuple[float, ...] = ()  # min, p50, max
    text_max_s: float = 0.0  # slowest text search sent during the burst

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.before_mb

    @property
    def tree_growth_mb(self) -> float:
        return self.tree_peak_mb - self.tree_before_mb


@dataclass
class Answers:
    statuses: Counter[int] = field(default_factory=Counter)
    retry_after: int = 0  # 503s that carry Retry-After
    latencies: list[float] = field(default_factory=list)
    text_latencies: list[float] = field(default_factory=list)  # the probe's


async def send_all(
    base: str, data: bytes, n: int, *, probe: bool = False, retries: bool = False
) -> Answers:
    """``n`` uploads of ``data`` started together; with ``probe``, a text search every
    second while they run (does other traffic wait behind the decodes?); with
    ``retries``, a 503 with ``Retry-After`` is sent again after that long."""
    answers = Answers()
    start = asyncio.Event()
    limits = httpx.Limits(max_connections=n + 1, max_keepalive_connections=n + 1)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=30)

    async def upload(http: httpx.AsyncClient) -> None:
        await start.wait()
        t0 = time.perf_counter()
        for _ in range(MAX_RETRIES + 1):
            try:
                r = await http.post(
                    "/v1/search/image",
                    files={"file": ("upload.png", data, "image/png")},
                    data={"options": json.dumps({"k": 5})},
                )
            except httpx.HTTPError:
                answers.statuses[0] += 1  # 0: no answer (timeout, reset)
                break
            shed = r.status_code == 503 and "retry-after" in r.headers
            answers.retry_after += shed
            if not (shed and retries):
                answers.statuses[r.status_code] += 1
                break
            await asyncio.sleep(float(r.headers["retry-after"]))
        answers.latencies.append(time.perf_counter() - t0)

    async def text_probe(http: httpx.AsyncClient, uploads: asyncio.Future[list[None]]) -> None:
        await start.wait()
        i = 0
        while not uploads.done():
            await asyncio.sleep(1.0)
            t0 = time.perf_counter()
            body = {"text": f"ct chest axial {i}", "k": 5}
            with contextlib.suppress(httpx.HTTPError):
                await http.post("/v1/search/text", json=body)
            answers.text_latencies.append(time.perf_counter() - t0)
            i += 1

    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as http:
        uploads = asyncio.gather(*(upload(http) for _ in range(n)))
        prober = asyncio.create_task(text_probe(http, uploads)) if probe else None
        await asyncio.sleep(0.1)  # every upload waits on the event: they start together
        start.set()
        await uploads
        if prober is not None:
            await prober
    return answers


def run_burst(base: str, pid: int, burst: Burst, data: bytes) -> Burst:
    time.sleep(0.5)
    burst.before_mb = rss_mb(pid)
    burst.tree_before_mb = burst.before_mb + sum(rss_mb(w) for w in decoder_workers(pid))
    t0 = time.perf_counter()
    with Sampler(pid) as sampler:
        answers = asyncio.run(
            send_all(base, data, burst.concurrency, probe=True, retries=burst.retries)
        )
    burst.seconds = round(time.perf_counter() - t0, 2)
    time.sleep(0.5)
    burst.after_mb = rss_mb(pid)
    burst.peak_mb = max(sampler.peak_mb, burst.before_mb)
    burst.tree_peak_mb = max(sampler.tree_peak_mb, burst.tree_before_mb)
    burst.hwm_mb = hwm_mb(pid)
    burst.workers_peak_mb = sampler.workers_peak_mb
    burst.workers_sum_peak_mb = sampler.workers_sum_peak_mb
    burst.workers_seen = len(sampler.worker_pids)
    burst.statuses = dict(sorted(answers.statuses.items()))
    burst.retry_after = answers.retry_after
    lat = np.asarray(answers.latencies)
    burst.latency_s = tuple(round(float(x), 1) for x in (lat.min(), np.median(lat), lat.max()))
    burst.text_max_s = round(max(answers.text_latencies, default=0.0), 2)
    return burst


def build_index(tmp: Path) -> Path:
    sources = tmp / "sources"
    sources.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(testdata(name), sources / name)
    index = tmp / "index"
    command = [
        sys.executable, "-m", "indexer.cli", "index", "build", str(sources),
        "--index", str(index), "--model", str(TEST_MODEL), "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"index build failed: {done.stderr[-2000:]}")
    return index


def table(bursts: list[Burst]) -> str:
    head = (
        "| input | file bytes | concurrency | budget MB | server growth MB | peak RSS MB "
        "| before / after MB | VmHWM MB | worker peak MB (one / all) "
        "| server+workers growth MB | codes | latency s (min / p50 / max) "
        "| text search during, max s | seconds |"
    )
    rows = [head, "|" + "---|" * 14]
    for b in bursts:
        codes = " ".join(f"{code}x{count}" for code, count in b.statuses.items())
        if b.retry_after:
            again = ", sent again" if b.retries else ""
            codes += f" (503 with Retry-After: {b.retry_after}{again})"
        rows.append(
            f"| {b.input} | {b.file_bytes:,} | {b.concurrency} | {b.budget_mb} "
            f"| {b.growth_mb:.1f} | {b.peak_mb:.1f} | {b.before_mb:.1f} / {b.after_mb:.1f} "
            f"| {b.hwm_mb:.1f} | {b.workers_peak_mb:.1f} / {b.workers_sum_peak_mb:.1f} "
            f"| {b.tree_growth_mb:.1f} | {codes} | {' / '.join(map(str, b.latency_s))} "
            f"| {b.text_max_s} | {b.seconds} |"
        )
    return "\n".join(rows)


def cold_start(base: str, pid: int, data: bytes, n: int) -> None:
    """One unmeasured burst: ONNX Runtime's arena grows to a full micro-batch once."""
    before = rss_mb(pid)
    t0 = time.perf_counter()
    statuses = asyncio.run(send_all(base, data, n)).statuses
    print(
        f"  cold start (baseline x{n}, unmeasured): server {before:.1f} -> {rss_mb(pid):.1f} MB, "
        f"{dict(statuses)}, {time.perf_counter() - t0:.1f} s"
    )


def report(bursts: list[Burst], concurrency: int) -> bool:
    print()
    print(table(bursts))
    base_growth, hostile = bursts[0].growth_mb, bursts[1]
    ratio = hostile.growth_mb / max(base_growth, 1.0)
    print(
        f"\nhostile / baseline server growth: {hostile.growth_mb:.1f} / {base_growth:.1f} MB "
        f"= {ratio:.2f}x (baseline floored at 1 MB)"
    )
    ok = hostile.growth_mb < TARGET_GROWTH_MB and hostile.statuses.get(200) == concurrency
    print(
        f"{'PASS' if ok else 'FAIL'}: {concurrency} concurrent hostile uploads grew the server "
        f"process by {hostile.growth_mb:.1f} MB (target < {TARGET_GROWTH_MB:.0f} MB, all "
        f"answered 200); server + decoder workers grew by {hostile.tree_growth_mb:.1f} MB"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--budget-mb", type=int, default=256, help="MEDSEARCH_DECODE_BUDGET_MB")
    parser.add_argument("--excess", type=int, default=128, help="uploads in the excess burst")
    parser.add_argument(
        "--excess-budgets",
        default="8",
        help="comma-separated decode budgets (MB) for the excess burst, one fresh server "
        "each; empty: skip",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import onnxruntime

    bursts: list[Burst] = []
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as name:
        tmp = Path(name)
        t0 = time.perf_counter()
        index = build_index(tmp)
        print(f"index of CT_small + MR_small built in {time.perf_counter() - t0:.1f} s")
        baseline = baseline_png(testdata("CT_small.dcm"))
        hostile = hostile_png()
        print(
            f"baseline: CT_small as PNG, {len(baseline):,} bytes; hostile: "
            f"{HOSTILE_SIDE}x{HOSTILE_SIDE} grey PNG, {len(hostile):,} bytes "
            f"({HOSTILE_SIDE**2 * 3 / 1e6:.0f} MB as RGB)"
        )
        plan = [("baseline CT_small", baseline), ("hostile 6300x6300", hostile)]
        env = {"MEDSEARCH_DECODE_BUDGET_MB": str(args.budget_mb)}
        with server(index, tmp / "server.log", env) as (base, pid):
            print(f"server pid {pid}, RSS {rss_mb(pid):.1f} MB when ready")
            cold_start(base, pid, baseline, args.concurrency)
            for label, data in plan:
                b = Burst(label, len(data), args.concurrency, args.budget_mb)
                run_burst(base, pid, b, data)
                bursts.append(b)
                print(f"  {label} x{b.concurrency}: {b.growth_mb:.1f} MB, {b.statuses}")
        for budget in [int(x) for x in args.excess_budgets.split(",") if x.strip()]:
            env = {"MEDSEARCH_DECODE_BUDGET_MB": str(budget)}
            with server(index, tmp / f"server-{budget}.log", env) as (base, pid):
                cold_start(base, pid, baseline, args.concurrency)
                b = Burst("hostile 6300x6300", len(hostile), args.excess, budget, retries=False)
                run_burst(base, pid, b, hostile)
                bursts.append(b)
                print(f"  hostile x{args.excess}, budget {budget} MB: {b.statuses}")

    ok = report(bursts, args.concurrency)
    print(
        f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
        f"{os.cpu_count()} CPUs"
    )
    if args.json:
        out = {
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "bursts": [
                {
                    **asdict(b),
                    "growth_mb": round(b.growth_mb, 1),
                    "tree_growth_mb": round(b.tree_growth_mb, 1),
                }
                for b in bursts
            ],
            "pass": ok,
        }
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
