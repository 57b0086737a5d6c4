"""Benchmark ``medsearch index watch``: time from an upload to Orthanc until the instance
is searchable over HTTP (p50/p95), with the bundled test model on CPU.

A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``), a watcher process following
its change feed (``--interval``, ``--batch``), and the query service on loopback
reloading new index versions every 0.2 s. One new series (``--slices`` instances) is
uploaded at a time; the clock runs from the end of the upload until a text search
filtered to that series returns every instance. Also recorded: until the catalog holds
them (committed) and until a published index version holds them.

Usage::

    python benchmarks/bench_watch.py --uploads 20
    python benchmarks/bench_watch.py --uploads 20 --interval 2 --slices 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(checks: list[tuple[str, object]], wait_for: object) -> list[float]:
    """Seconds from now until each check holds, in order."""
    started, out = time.monotonic(), []
    for what, check in checks:
        wait_for(check, 120, what, 0.01)  # type: ignore[operator]
        out.append(time.monotonic() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--slices", type=int, default=1, help="instances per upload")
    parser.add_argument("--interval", type=float, default=0.5, help="watcher --interval")
    parser.add_argument("--batch", type=int, default=8, help="watcher --batch")
    args = parser.parse_args()

    from indexer.store.sync import index_store
    from service.app import create_app
    from tests.pacs.orthanc import PASSWORD, USER, orthanc
    from tests.series.corpus import write_series
    from tests.service.conftest import settings_for
    from tests.service.live import serve
    from tests.watch.harness import WatcherProcess, active_sops, wait_for

    os.environ["MEDSEARCH_DICOMWEB_USERNAME"] = USER
    os.environ["MEDSEARCH_DICOMWEB_PASSWORD"] = PASSWORD
    work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    index = work / "index"

    def published() -> int:
        manifest = index_store(index).current() if (index / "index").exists() else None
        return -1 if manifest is None else manifest.count

    times: list[list[float]] = []
    try:
        with orthanc(work / "orthanc") as pacs:
            pacs.upload(write_series(work / "src", seed=0, slices=1).paths)
            watcher = WatcherProcess(pacs, index, work / "watch.log", batch=args.batch)
            watcher.args[watcher.args.index("--interval") + 1] = str(args.interval)
            watcher.start()
            try:
                wait_for(lambda: published() == 1, 120, "the first upload published")
                app = create_app(settings_for(index))
                with serve(app) as base, httpx.Client(timeout=30) as http:
                    for n in range(args.uploads):
                        series = write_series(work / "src", seed=n + 1, slices=args.slices)
                        done = len(active_sops(index)) + args.slices
                        wanted = {"series_instance_uid": [series.series_uid]}
                        body = {"text": "ct", "k": 50, "filters": wanted}

                        def found(body: dict[str, object] = body) -> int:
                            answer = http.post(f"{base}/v1/search/text", json=body)
                            return len(answer.json()["results"])

                        pacs.upload(series.paths)
                        times.append(_timed([
                            ("committed", lambda done=done: len(active_sops(index)) >= done),
                            ("published", lambda done=done: published() >= done),
                            ("searchable", lambda: found() == args.slices),
                        ], wait_for))  # fmt: skip
                        time.sleep(0.2)
            finally:
                watcher.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def pct(values: list[float]) -> dict[str, float]:
        arr = np.asarray(values)
        return {"p50_s": round(float(np.percentile(arr, 50)), 3),
                "p95_s": round(float(np.percentile(arr, 95)), 3),
                "max_s": round(float(arr.max()), 3)}  # fmt: skip

    columns = list(zip(*times, strict=True))
    print(json.dumps({
        "uploads": args.uploads, "instances_per_upload": args.slices,
        "interval_s": args.interval, "batch": args.batch,
        "committed": pct(list(columns[0])), "published": pct(list(columns[1])),
        "searchable_over_http": pct(list(columns[2])),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
