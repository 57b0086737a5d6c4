"""Service benchmark: route latency (test model and full-size model) and the gain from
micro-batching, each against a baseline measured in the same run.

    python benchmarks/bench_service.py [--full-model benchmarks/_work/full/model] [--json F]

1. Latency, one client at a time (p50/p99): neighbours by id, text search, image search
   (a 512x512 PNG upload), on an index of pydicom's test files built with the test model,
   and, if ``--full-model`` is given, on a small index built with that model.
2. Throughput of image search at 16 concurrent clients with micro-batching
   (``MEDSEARCH_BATCH_WINDOW_MS=3``, ``MAX_BATCH=16``) against one request per encoder run
   (``BATCH_WINDOW_MS=0``, ``MAX_BATCH=1``), same server code, same requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.service.load import percentiles, png_b64, run_load, server_process

TEST_MODEL = Path(__file__).resolve().parents[1] / "tests" / "data" / "test_model"


def corpus() -> Path:
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files"


def build(index_dir: Path, model: Path, sources: list[str], batch_size: int = 16) -> int:
    from indexer.pipeline.runner import BuildOptions, run_build

    report = run_build(
        BuildOptions(sources, index_dir, model, workers=2, batch_size=batch_size, progress=False)
    )
    return report.indexed


def repeat(kind: str, path: str, body: dict[str, object]) -> Iterator[tuple[str, str, Any]]:
    while True:
        yield kind, path, body


def latencies(base: str, n: int, n_items: int) -> dict[str, Any]:
    image = png_b64(512, 3)
    cases = {
        "neighbors": ("neighbors", f"/v1/items/{max(1, n_items // 2)}/neighbors?k=10", {}),
        "text": ("text", "/v1/search/text", {"text": "x-ray chest anteroposterior", "k": 10}),
        "image_512": ("image_512", "/v1/search/image", {"image": image, "k": 10}),
    }
    out: dict[str, Any] = {}
    for name, (kind, path, body) in cases.items():
        reps = n if name != "image_512" else max(5, n // 10)
        if name == "text":  # distinct texts: measure the encoder, not the cache
            texts = iter(
                ("text", path, {"text": f"x-ray chest anteroposterior finding {i}", "k": 10})
                for i in range(10**6)
            )
            result = asyncio.run(run_load(base, texts, clients=1, total=reps))
        else:
            result = asyncio.run(run_load(base, repeat(kind, path, body), clients=1, total=reps))
        assert result.statuses == {200: reps}, result.statuses
        out[name] = percentiles(result.latencies[kind])
    return out


def throughput(index_dir: Path, model: Path, clients: int, seconds: float) -> dict[str, Any]:
    images = [png_b64(256, s) for s in range(8)]

    def requests() -> Iterator[tuple[str, str, Any]]:
        i = 0
        while True:
            i += 1
            yield "image", "/v1/search/image", {"image": images[i % len(images)], "k": 10}

    out: dict[str, Any] = {}
    settings = {
        "one_per_run": {"MEDSEARCH_BATCH_WINDOW_MS": "0", "MEDSEARCH_MAX_BATCH": "1"},
        "micro_batched": {"MEDSEARCH_BATCH_WINDOW_MS": "3", "MEDSEARCH_MAX_BATCH": "16"},
    }
    for name, env in settings.items():
        with server_process(index_dir, model, env) as (base, _):
            asyncio.run(run_load(base, requests(), clients=clients, total=2 * clients))  # warm
            result = asyncio.run(run_load(base, requests(), clients=clients, seconds=seconds))
        assert set(result.statuses) == {200}, result.statuses
        out[name] = {
            "requests_per_s": round(result.count / result.seconds, 2),
            **percentiles(result.latencies["image"]),
        }
    out["ratio_micro_batched_over_one_per_run"] = round(
        out["micro_batched"]["requests_per_s"] / out["one_per_run"]["requests_per_s"], 2
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-model", type=Path, default=None)
    parser.add_argument("--full-images", type=int, default=16)
    parser.add_argument("--n", type=int, default=200, help="requests per latency case")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import onnxruntime

    report: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "python": sys.version[:6]},
        "onnxruntime": onnxruntime.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = Path(tmp) / "test-index"
        t0 = time.perf_counter()
        n_items = build(index_dir, TEST_MODEL, [str(corpus())])
        print(f"test-model index: {n_items} items in {time.perf_counter() - t0:.1f} s")
        with server_process(index_dir, TEST_MODEL) as (base, _):
            report["latency_test_model"] = latencies(base, args.n, n_items)
        print("latency, test model:", json.dumps(report["latency_test_model"]))
        report["throughput_image_test_model"] = throughput(
            index_dir, TEST_MODEL, args.clients, args.seconds
        )
        print("image throughput, test model:", json.dumps(report["throughput_image_test_model"]))
        if args.full_model is not None:
            full_dir = Path(tmp) / "full-index"
            files = sorted(corpus().glob("*.dcm"))[: args.full_images * 3]
            sample = Path(tmp) / "sample"
            sample.mkdir()
            for f in files:
                (sample / f.name).write_bytes(f.read_bytes())
            t0 = time.perf_counter()
            n_full = build(full_dir, args.full_model, [str(sample)], batch_size=4)
            print(f"full-model index: {n_full} items in {time.perf_counter() - t0:.1f} s")
            with server_process(full_dir, args.full_model) as (base, _):
                report["latency_full_model"] = latencies(base, max(20, args.n // 10), n_full)
            print("latency, full model:", json.dumps(report["latency_full_model"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
