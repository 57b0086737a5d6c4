"""Mutated uploads against a live server, and every route probed without a key (issue 17).

    python benchmarks/bench_upload_fuzz.py [--n 2000] [--clients 8] [--seed 20261130]
        [--json out.json] [--logs DIR]

1. Fuzz: ``--n`` mutated files (truncated and bit-flipped copies of the seeds of
   ``tests/imaging/test_fuzz.py``, by its ``mutations()``, seeded) are uploaded as multipart
   POST /v1/search/image (options ``{"k": 3}``) by ``--clients`` concurrent clients, in
   order from one shared queue. After every 25 mutated files comes a valid one (pydicom's
   CT_small, MR_small, CT_small rendered to PNG, in turn), and after every 100 mutated ones
   a file that drives a decoder to its memory limit: pydicom's SC_rgb_jpeg_dcmtk with the
   JPEG SOF0 height set to 0 (two places before a valid one). Target: no valid upload refused (the
   issue saw 6 of 240 refused after a memory failure: a worker that grew kept its address
   space), no 5xx, every request answered.
2. Security probe: a second server with ``MEDSEARCH_API_KEYS``; every operation of its
   /openapi.json is sent without a key and with a wrong key: each must answer 401; with
   the right key none may. Listed apart: POSTs without a key whose body is not JSON
   (FastAPI parses the body before the key check), and what is open by design: the page
   ("/", /static) and FastAPI's /openapi.json and /docs.

Servers: ``python -m service -v serve`` (test model, an index of CT_small + MR_small built
with the CLI), default settings except ``MEDSEARCH_INTRA_OP_THREADS=1``; ``-v`` only logs at
INFO, so that worker recycling and retries appear in the server log. /metrics exports no
process or decoder-worker figures: the server's RSS is read from /proc, worker replacements
are counted in the log (and decoder worker pids seen by a 0.1 s sampler, a lower bound).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_upload_memory import (
    baseline_png,
    build_index,
    decoder_workers,
    hwm_mb,
    rss_mb,
    server,
    testdata,
)
from tests.imaging.test_fuzz import _seeds, mutations

ROOT = Path(__file__).resolve().parents[1]
TEST_MODEL = ROOT / "tests" / "data" / "test_model"
VALID_EVERY = 25  # mutated uploads between two valid ones
BOMB_EVERY = 100  # mutated uploads between two memory-limit files
REQUEST_TIMEOUT_S = 300.0
OPEN_PATHS = ("/", "/static/index.html", "/static/app.js", "/openapi.json", "/docs")
LOG_EVENTS = {  # server log line -> what it counts (guard.py's messages)
    "decoder worker replaced: decode memory limit": "replaced after memory limit",
    "decoder worker replaced: decode timeout": "replaced after timeout",
    "decoder worker replaced: decoder crashed": "replaced after crash",
    "decoder worker recycled": "recycled after growth",
    "decoder worker found dead": "found dead",
    "retrying a job on a fresh decoder worker": "job retried on a fresh worker",
    "Traceback": "tracebacks",
}


# -- inputs
@dataclass(frozen=True)
class Upload:
    kind: str  # "mutated", "valid" or "bomb"
    label: str
    data: bytes


def jpeg_height_zero() -> bytes:
    """SC_rgb_jpeg_dcmtk with the SOF0 frame height set to 0: a decoder meets its limit."""
    b = bytearray(testdata("SC_rgb_jpeg_dcmtk.dcm").read_bytes())
    i = b.find(b"\xff\xc0")
    b[i + 5 : i + 7] = b"\0\0"
    return bytes(b)


def plan(n: int, seed: int) -> list[Upload]:
    """``n`` mutated files in a seeded order, a valid file after every 25 of them, a
    memory-limit file after every 100 (two places before a valid one)."""
    rng = np.random.default_rng(seed)
    seeds = _seeds()
    per_seed = math.ceil(n / len(seeds))
    mutated = [
        Upload("mutated", f"{name}#{i}", m)
        for name, data in sorted(seeds.items())
        for i, m in enumerate(mutations(data, rng, per_seed))
    ]
    order = rng.permutation(len(mutated))[:n]
    ct = testdata("CT_small.dcm")
    valid = [
        Upload("valid", "CT_small.dcm", ct.read_bytes()),
        Upload("valid", "MR_small.dcm", testdata("MR_small.dcm").read_bytes()),
        Upload("valid", "CT_small.png", baseline_png(ct)),
    ]
    bomb = Upload("bomb", "SC_rgb_jpeg_dcmtk.dcm, SOF0 height 0", jpeg_height_zero())
    out: list[Upload] = []
    for i, j in enumerate(order, 1):
        out.append(mutated[j])
        if i % BOMB_EVERY == VALID_EVERY - 1:
            out.append(bomb)  # two places before a valid file
        if i % VALID_EVERY == 0:
            out.append(valid[(i // VALID_EVERY - 1) % len(valid)])
    return out


class WorkerWatch:
    """Decoder worker pids seen every 0.1 s while the fuzz runs (replacements may be missed
    between two looks: the server log is the exact count)."""

    def __init__(self, server: int) -> None:
        self.server = server
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.pids.update(decoder_workers(self.server))
            self._stop.wait(0.1)

    def __enter__(self) -> WorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- fuzz
@dataclass
class Answer:
    upload: Upload
    status: int  # 0: no answer (timeout, reset)
    reason: str  # the refusal's error and first words of its detail
    detail: str
    started: float  # wall clock, to find the server's log lines
    seconds: float


def refusal(r: httpx.Response) -> tuple[str, str]:
    try:
        body = r.json()
    except ValueError:
        return f"{r.status_code} (not JSON)", r.text[:200]
    detail = body.get("detail") if isinstance(body, dict) else None
    error = body.get("error", "") if isinstance(body, dict) else ""
    text = detail if isinstance(detail, str) else json.dumps(detail)
    first = " ".join(re.split(r"[:(]", text, maxsplit=1)[0].split()[:5])
    return f"{r.status_code} {error}: {first}", text[:300]


async def fuzz(base: str, uploads: list[Upload], clients: int) -> list[Answer]:
    queue = iter(uploads)  # one shared queue: uploads go out in order
    answers: list[Answer] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=30)

    async def client(http: httpx.AsyncClient) -> None:
        for upload in queue:
            started, t0 = time.time(), time.perf_counter()
            status, reason, detail = 0, "no answer", ""
            try:
                r = await http.post(
                    "/v1/search/image",
                    files={"file": ("upload", upload.data, "application/octet-stream")},
                    data={"options": json.dumps({"k": 3})},
                )
                status = r.status_code
                reason, detail = ("200", "") if status == 200 else refusal(r)
            except httpx.HTTPError as exc:
                detail = type(exc).__name__
            answers.append(
                Answer(upload, status, reason, detail, started, time.perf_counter() - t0)
            )

    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return answers


def log_events(log: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        for needle, name in LOG_EVENTS.items():
            counts[name] += needle in line
    return counts


def log_lines_near(log: Path, started: float, seconds: float) -> list[str]:
    """The server's timestamped log lines from 1 s before a request to 1 s after it."""
    lo, hi = started - 1, started + seconds + 1
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            at = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue
        if lo - 1 <= at <= hi:
            out.append(line[:300])
    return out


def image_metrics(base: str) -> dict[str, int]:
    """/metrics' request counts for /v1/search/image by status (a cross-check)."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    out: dict[str, int] = {}
    pattern = r'medsearch_requests_total\{(?=[^}]*route="/v1/search/image")[^}]*status="(\d+)"'
    for m in re.finditer(pattern + r"[^}]*\} ([0-9.e+]+)", text):
        out[m.group(1)] = int(float(m.group(2)))
    return out


def report_fuzz(answers: list[Answer], log: Path) -> dict[str, object]:
    by_kind: dict[str, Counter[int]] = {}
    for a in answers:
        by_kind.setdefault(a.upload.kind, Counter())[a.status] += 1
    reasons = Counter(a.reason for a in answers if a.upload.kind == "mutated" and a.status != 200)
    bomb = Counter(a.reason for a in answers if a.upload.kind == "bomb")
    refused = [a for a in answers if a.upload.kind == "valid" and a.status != 200]
    broken = [a for a in answers if a.status >= 500 or a.status == 0]
    print("\n| uploads | count | status codes | latency s (p50 / max) |\n|---|---|---|---|")
    for kind in ("mutated", "valid", "bomb"):
        lat = [a.seconds for a in answers if a.upload.kind == kind]
        codes = " ".join(f"{c}x{n}" for c, n in sorted(by_kind.get(kind, Counter()).items()))
        p50, top = (np.median(lat), max(lat)) if lat else (0.0, 0.0)
        print(f"| {kind} | {len(lat)} | {codes} | {p50:.2f} / {top:.2f} |")
    print("\nmutated uploads refused, by reason:")
    for reason, n in reasons.most_common():
        print(f"  {n:5d}  {reason}")
    print("memory-limit file (SOF0 height 0):", dict(bomb))
    print("slowest uploads:")
    for a in sorted(answers, key=lambda a: -a.seconds)[:5]:
        at = time.strftime("%H:%M:%S", time.localtime(a.started))
        print(f"  {a.seconds:6.1f} s  {a.upload.kind} {a.upload.label} ({a.reason}), sent {at}")
    print(f"valid uploads refused: {len(refused)} (target 0)")
    print(f"5xx or no answer: {len(broken)} (target 0)")
    for a in refused + broken:
        print(f"  {a.upload.kind} {a.upload.label}: {a.status} {a.detail}")
        for line in log_lines_near(log, a.started, a.seconds):
            print(f"    log: {line}")
    return {
        "statuses": {k: dict(sorted(v.items())) for k, v in by_kind.items()},
        "mutated_refusals": dict(reasons.most_common()),
        "bomb": dict(bomb),
        "valid_refused": [(a.upload.label, a.status, a.detail) for a in refused],
        "server_errors": [(a.upload.kind, a.upload.label, a.status, a.detail) for a in broken],
    }


# -- security probe
def probe(index: Path, log: Path) -> dict[str, object]:
    """Each operation without a key and with a wrong one (target: 401), with the right key
    (not 401), and, apart, without a key but with a body that is not JSON: FastAPI parses
    a JSON body before it runs the key check, so that one may answer 422 first."""
    key = secrets.token_urlsafe(18)  # 24 characters
    wrong = {"Authorization": f"Bearer {secrets.token_urlsafe(18)}"}
    good = {"Authorization": f"Bearer {key}"}
    env = {"MEDSEARCH_API_KEYS": json.dumps([key])}
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    before_key: list[str] = []  # malformed JSON without a key, answered other than 401
    with (
        server(index, log, env, headers=good, verbose=True) as (base, _),
        httpx.Client(base_url=base, timeout=60) as http,
    ):
        schema = http.get("/openapi.json", headers=good).json()
        operations = [
            (method.upper(), re.sub(r"\{[^}]+\}", "1", path))
            for path, item in sorted(schema["paths"].items())
            for method in item
            if method in ("get", "post", "put", "patch", "delete")
        ]
        for method, path in operations:
            for name, headers in (("no key", {}), ("wrong key", wrong), ("right key", good)):
                status = http.request(method, path, headers=headers).status_code
                if name == "right key":
                    outcomes[f"right key: {'401' if status == 401 else 'not 401'}"] += 1
                else:
                    outcomes[f"{name}: {status}"] += 1
                if (status == 401) == (name == "right key"):
                    failures.append(f"{method} {path} ({name}): {status}")
            if method != "GET":
                r = http.request(
                    method, path, headers={"Content-Type": "application/json"}, content=b"{"
                )
                outcomes[f"no key, malformed JSON: {r.status_code}"] += 1
                if r.status_code != 401:
                    before_key.append(f"{method} {path}: {r.status_code} {r.text[:120]}")
        open_paths = {path: http.get(path).status_code for path in OPEN_PATHS}
    print(f"\nsecurity probe: {len(operations)} operations in /openapi.json")
    for outcome, n in sorted(outcomes.items()):
        print(f"  {n:4d}  {outcome}")
    print(f"not as expected (no key or wrong key not 401, right key 401): {len(failures)}")
    for line in failures:
        print(f"  {line}")
    print(f"malformed JSON without a key answered before the key check: {len(before_key)}")
    for line in before_key:
        print(f"  {line}")
    print("open without a key (the page, FastAPI's docs):", open_paths)
    return {
        "operations": len(operations),
        "outcomes": dict(outcomes),
        "failures": failures,
        "before_key": before_key,
        "open": open_paths,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="mutated uploads")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--logs", type=Path, default=None, help="keep the server logs here")
    args = parser.parse_args()
    import onnxruntime

    uploads = plan(args.n, args.seed)
    kinds = Counter(u.kind for u in uploads)
    print(f"plan: {len(uploads)} uploads {dict(kinds)}, {args.clients} clients, seed {args.seed}")
    out: dict[str, object] = {"n": args.n, "clients": args.clients, "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as name:
        tmp = Path(name)
        index = build_index(tmp)
        log = tmp / "server.log"
        with server(index, log, {}, verbose=True) as (base, pid):
            print(f"server pid {pid}, RSS {rss_mb(pid):.1f} MB when ready")
            t0 = time.perf_counter()
            with WorkerWatch(pid) as watch:
                answers = asyncio.run(fuzz(base, uploads, args.clients))
            seconds = time.perf_counter() - t0
            time.sleep(1.0)
            workers = decoder_workers(pid)
            memory = {
                "server_rss_mb": round(rss_mb(pid), 1),
                "server_hwm_mb": round(hwm_mb(pid), 1),
                "workers_rss_mb": [round(rss_mb(w), 1) for w in workers],
                "worker_pids_seen": len(watch.pids),
            }
            metrics = image_metrics(base)
        print(
            f"fuzz: {len(answers)} uploads in {seconds:.1f} s "
            f"({len(answers) / seconds:.1f}/s), {args.clients} clients"
        )
        out["fuzz"] = report_fuzz(answers, log)
        events = log_events(log)
        print("server, final:", memory)
        print("decoder workers (server log):", dict(events))
        print("/metrics, /v1/search/image by status:", metrics)
        out.update(seconds=round(seconds, 1), memory=memory, log=dict(events), metrics=metrics)
        out["probe"] = probe(index, tmp / "server-keyed.log")
        if args.logs is not None:
            args.logs.mkdir(parents=True, exist_ok=True)
            for kept in (log, tmp / "server-keyed.log"):
                shutil.copy(kept, args.logs / kept.name)

    print(
        f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
        f"httpx {httpx.__version__}, {os.cpu_count()} CPUs"
    )
    fuzz_out, probe_out = out["fuzz"], out["probe"]
    assert isinstance(fuzz_out, dict) and isinstance(probe_out, dict)
    ok = not (fuzz_out["valid_refused"] or fuzz_out["server_errors"] or probe_out["failures"])
    print("PASS" if ok else "FAIL")
    if args.json:
        args.json.write_text(json.dumps({**out, "pass": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
