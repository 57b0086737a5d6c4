"""Series search (issue 14): the series index at 10^5 series, the end-to-end series search
on a real catalog, and what keeping series vectors costs a build.

    python benchmarks/bench_series.py                      # ~4-5 minutes on 2 cores
    python benchmarks/bench_series.py --series 20000 --catalog-series 2000 \\
        --build-series 20 --slices 20                      # smoke test, < 1 minute
    python benchmarks/bench_series.py --json benchmarks/_work/bench_series.json

Measured in one run:

1. **Series index**: ``--series`` synthetic series vectors (L2-normalised, ``--clusters``
   centres in correlated groups with spread and noise: ``bench_search.mixture``) indexed
   with ``build_index`` as :func:`indexer.store.sync._series_full` does (its defaults: an
   IVF at this size, ``nlist`` from N, ``nprobe`` tuned to recall@10 >= 0.95). Queries:
   held-out vectors of the same distribution, and exact copies of indexed vectors, one at
   a time after a warm-up, through :func:`indexer.store.vector_index.search`, with FAISS
   on one OpenMP thread and on its default. The baseline, in the same run: exact search
   (``IndexFlatIP`` behind ``IndexIDMap2``, the project's ``flat`` kind) over the same
   vectors through the same function; recall@10 is against it.
2. **End-to-end** ``SeriesSearcher.search`` (the series index plus the catalog reads: the
   result series' rows and, per result, its members' embeddings and best slices), with
   ``rerank=True``, and ``search_studies``, on a catalog written for this benchmark with
   the Catalog API (``--catalog-series`` series of ``--items-per-series`` items, 4 series
   per study) and published with ``sync_index``. Smaller than 10^5 series by
   default so that the run stays in minutes on 2 cores: the series index is then exact
   (flat); the catalog's share of the latency is reported apart from the index's. Also
   timed: the ``sync_index`` calls of that catalog (full, after a small add, with
   nothing new) and the series work inside them.
3. **Cost of series vectors in a build**: a real ``run_build`` of ``--build-series``
   generated CT/MR series (``tests/series/corpus.py``) with the encoder replaced, in this
   benchmark only, by ``bench_pipeline.StandInEncoder`` (normalise, then sleep 1.25 ms
   per image as a GPU would, emitting ``--build-dim``-d vectors): decoding limits the
   build as on a GPU host. The series work (``refresh_series``, ``_series_full``,
   ``_series_update`` of :mod:`indexer.store.sync`, wrapped here, each call's time
   counted once) as a share of the whole build. Target <= 5%. Then an incremental
   ``run_build`` into the same index: two slices more for 10 of the series and two new
   series.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from bench_search import Ids, K, Vectors, mixture, percentiles, recall_at_k

import indexer.pipeline.runner as runner_module
import indexer.store.sync as sync_module
from indexer.encoders.encoder import Encoder
from indexer.pipeline.runner import BuildOptions, BuildReport, run_build
from indexer.settings import EncoderSettings, ImagingSettings
from indexer.store.catalog import Catalog, ModelBinding, NewItem, catalog_url
from indexer.store.searcher import Searcher
from indexer.store.series_search import SeriesQuery, SeriesSearcher
from indexer.store.sync import SERIES_COMPRESSION
from indexer.store.vector_index import build_index, search

# Loaded at run time so that mypy checks this file, not them (pyproject's mypy covers the
# packages only; bench_pipeline imports pydicom-data, which has no type stubs).
_pipeline = importlib.import_module("bench_pipeline")
MODEL: Path = _pipeline.MODEL
StandInEncoder: type[Encoder] = _pipeline.StandInEncoder
write_series: Callable[..., Any] = importlib.import_module("tests.series.corpus").write_series

TARGET_SHARE = 0.05
TARGET_RECALL = 0.95
SERIES_STEPS = ("refresh_series", "_series_full", "_series_update")  # in indexer.store.sync
F = TypeVar("F", bound=Callable[..., Any])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- timing the series work inside sync_index


@dataclass
class SeriesTimes:
    """Seconds in each series step, a nested step's time counted in it only, not in its
    caller (``_series_update`` calls ``refresh_series`` and may call ``_series_full``)."""

    steps: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SERIES_STEPS, 0.0))
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SERIES_STEPS, 0))
    sync_s: float = 0.0
    _open: list[float] = field(default_factory=list)  # child seconds of each call in flight

    @property
    def series_s(self) -> float:
        return sum(self.steps.values())

    def timed(self, name: str, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._open.append(0.0)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self.steps[name] += elapsed - self._open.pop()
                self.calls[name] += 1
                if self._open:
                    self._open[-1] += elapsed

        return wrapper  # type: ignore[return-value]

    def summary(self, whole_s: float) -> dict[str, Any]:
        return {
            "whole_s": round(whole_s, 3),
            "sync_index_s": round(self.sync_s, 3),
            "series_s": round(self.series_s, 4),
            "series_share": round(self.series_s / whole_s, 5),
            "steps_s": {k: round(v, 4) for k, v in self.steps.items()},
            "calls": dict(self.calls),
        }


@contextmanager
def series_timed() -> Iterator[SeriesTimes]:
    """Benchmark-only instrumentation: wrap the series steps of ``indexer.store.sync`` and
    the build's ``sync_index`` call; restored on exit."""
    times = SeriesTimes()
    originals = {name: getattr(sync_module, name) for name in SERIES_STEPS}
    build_sync = "sync_index"  # the name run_build calls it by
    original_sync = getattr(runner_module, build_sync)

    def timed_sync(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original_sync(*args, **kwargs)
        finally:
            times.sync_s += time.perf_counter() - started

    try:
        for name, fn in originals.items():
            setattr(sync_module, name, times.timed(name, fn))
        setattr(runner_module, build_sync, timed_sync)
        yield times
    finally:
        for name, fn in originals.items():
            setattr(sync_module, name, fn)
        setattr(runner_module, build_sync, original_sync)


# -- 1. the series index at 10^5


def nearest(index: Any) -> Callable[[Vectors], Ids]:
    """One query's ``K`` nearest ids, through the function the series search uses."""

    def one(query: Vectors) -> Ids:
        return search(index, query, K)[1][0]

    return one


def timed_search(one: Callable[[Vectors], Ids], queries: Vectors) -> tuple[list[Ids], list[float]]:
    for q in queries[: min(10, len(queries))]:  # warm-up
        one(q[None])
    found, seconds = [], []
    for q in queries:
        started = time.perf_counter()
        found.append(one(q[None]))
        seconds.append(time.perf_counter() - started)
    return found, seconds


def index_search(args: argparse.Namespace) -> dict[str, Any]:
    n, dim = args.series, args.dim
    log(f"1. generating {n} x {dim} series vectors ({args.clusters} clusters)")
    x = mixture(n, dim, args.seed, 1, clusters=args.clusters)
    held = mixture(args.queries, dim, args.seed, 2, clusters=args.clusters)
    rows = np.sort(np.random.default_rng([args.seed, 3]).choice(n, args.copies, replace=False))
    queries = np.concatenate([held, x[rows]])
    ids = np.arange(1, n + 1, dtype=np.int64)  # catalog ids start at 1
    log("1. build_index (as _series_full calls it)")
    started = time.perf_counter()
    built = build_index(ids, x, compress=SERIES_COMPRESSION)
    build_s = time.perf_counter() - started
    exact = build_index(ids, x, kind="flat")
    truth = np.stack(search(exact.index, queries, K)[1])
    default_threads = faiss.omp_get_max_threads()
    h = len(held)  # queries[:h] are held out, queries[h:] are copies of indexed vectors
    runs: list[dict[str, Any]] = []
    for threads in sorted({1, default_threads}):
        faiss.omp_set_num_threads(threads)
        for name, index in (("exact", exact.index), (built.facts.kind, built.index)):
            log(f"1. {len(queries)} queries, {name}, {threads} thread(s)")
            found, seconds = timed_search(nearest(index), queries)
            p50, p99 = percentiles(seconds)
            runs.append(
                {
                    "index": name,
                    "threads": threads,
                    "p50_ms": round(p50, 3),
                    "p99_ms": round(p99, 3),
                    "recall_held_out": round(recall_at_k(found[:h], truth[:h]), 4),
                    "recall_copies": round(recall_at_k(found[h:], truth[h:]), 4),
                }
            )
    faiss.omp_set_num_threads(default_threads)
    for run in runs:
        base = next(r for r in runs if r["index"] == "exact" and r["threads"] == run["threads"])
        run["p50_over_exact"] = round(run["p50_ms"] / base["p50_ms"], 4)
    facts = built.facts
    return {
        "series": n,
        "dim": dim,
        "clusters": args.clusters,
        "held_out_queries": len(held),
        "copy_queries": len(rows),
        "kind": facts.kind,
        "nlist": facts.nlist,
        "nprobe": facts.nprobe,
        "tuned_recall": round(facts.recall_at_10, 4),
        "trained_on": facts.trained_on,
        "build_s": round(build_s, 1),
        "runs": runs,
    }


# -- 2. end to end on a real catalog


def _noisy(centres: Vectors, rng: np.random.Generator, scale: float) -> Vectors:
    out: Vectors = centres + rng.standard_normal(centres.shape).astype(np.float32) * scale
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def _item(n: int, series: int, vector: Vectors) -> NewItem:
    study = series // 4
    fields = {
        "sha256": f"{n:064x}",
        "size": 1,
        "format": "dicom",
        "width": 512,
        "height": 512,
        "modality": "CT" if series % 2 else "MR",
        "sop_instance_uid": f"1.2.826.0.1.9.{series}.{n}",
        "series_instance_uid": f"1.2.826.0.1.9.{series}",
        "study_instance_uid": f"1.2.826.0.1.8.{study}",
        "series_description": f"bench series {series}",
    }
    return NewItem(f"dicom:1.2.826.0.1.9.{series}.{n}:1", f"file:///bench/{n}.dcm", vector, fields)


def _add_series(
    catalog: Catalog, run: int, centres: Vectors, first_series: int, per: int, seed: int
) -> float:
    rng = np.random.default_rng([seed, 4, first_series])
    started = time.perf_counter()
    batch: list[NewItem] = []
    for offset, centre in enumerate(centres):
        series = first_series + offset
        for j, vector in enumerate(_noisy(np.repeat(centre[None], per, 0), rng, 0.02)):
            batch.append(_item(series * 100 + j, series, vector))
        if len(batch) >= 1000:
            catalog.add_batch(run, batch, [])
            batch = []
    if batch:
        catalog.add_batch(run, batch, [])
    return time.perf_counter() - started


def _timed_sync(catalog: Catalog, index_dir: Path, binding: ModelBinding) -> dict[str, Any]:
    with series_timed() as times:
        started = time.perf_counter()
        sync_module.sync_index(catalog, index_dir, binding)
        whole = times.sync_s = time.perf_counter() - started
    return times.summary(whole)


def catalog_search(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    n, per, dim = args.catalog_series, args.items_per_series, args.dim
    index_dir = tmp / "catalog"
    index_dir.mkdir()
    centres = mixture(n + 1, dim, args.seed, 5, clusters=args.clusters)
    catalog = Catalog.open(catalog_url(index_dir))
    try:
        binding = ModelBinding("bench-series", dim, "bench", "bench")
        catalog.bind_model(binding)
        run = catalog.start_run("build", ["bench"])
        log(f"2. writing {n} series x {per} items ({n * per} rows) with the Catalog API")
        insert_s = _add_series(catalog, run, centres[:n], 0, per, args.seed)
        log("2. sync_index: first build")
        syncs = {"full": _timed_sync(catalog, index_dir, binding)}
        _add_series(catalog, run, centres[n:], n, per, args.seed)  # one new series
        log("2. sync_index: one series added")
        syncs["add_one_series"] = _timed_sync(catalog, index_dir, binding)
        syncs["nothing_new"] = _timed_sync(catalog, index_dir, binding)
        searcher = SeriesSearcher(Searcher(index_dir, catalog))
        series_index = searcher.searcher.loaded.series
        kind = type(series_index).__name__
        rng = np.random.default_rng([args.seed, 6])
        held = mixture(args.e2e_queries, dim, args.seed, 7, clusters=args.clusters)
        queries = [SeriesQuery.of_slices(list(_noisy(np.repeat(c[None], 3, 0), rng, 0.02)))
                   for c in held]  # fmt: skip
        variants: dict[str, Callable[[SeriesQuery], Any]] = {
            "series index only": lambda q: search(series_index, q.vector[None], K),
            "search(k=10)": lambda q: searcher.search(q, K),
            "search(k=10, rerank=True)": lambda q: searcher.search(q, K, rerank=True),
            "search_studies(k=10)": lambda q: searcher.search_studies(q, K),
        }
        latency: dict[str, dict[str, float]] = {}
        for name, one in variants.items():
            log(f"2. {len(queries)} queries: {name}")
            for q in queries[:10]:
                one(q)
            seconds = []
            for q in queries:
                started = time.perf_counter()
                one(q)
                seconds.append(time.perf_counter() - started)
            p50, p99 = percentiles(seconds)
            latency[name] = {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}
        catalog_mb = (index_dir / "catalog.sqlite3").stat().st_size / 1e6
    finally:
        catalog.close()
    return {
        "series": n,
        "items_per_series": per,
        "items": n * per,
        "dim": dim,
        "series_index": kind,
        "insert_s": round(insert_s, 2),
        "catalog_mb": round(catalog_mb, 1),
        "syncs": syncs,
        "latency": latency,
    }


# -- 3. the series work in a build


def _corpus(root: Path, series: int, slices: int) -> tuple[Path, Path, int, int]:
    """``series`` series under ``root/src``; the last two slices of ten of them and two new
    series under ``root/more`` (the incremental add)."""
    src, more = root / "src", root / "more"
    studies = [generate_uid() for _ in range((series + 1) // 2)]
    for seed in range(series):
        modality = "CT" if seed % 2 else "MR"
        written = write_series(src, seed, slices, modality=modality, study_uid=studies[seed // 2])
        if seed < 10:
            (more / written.series_uid).mkdir(parents=True)
            for path in written.paths[-2:]:
                shutil.move(path, more / written.series_uid / path.name)
    for seed in range(series, series + 2):
        write_series(more, seed, slices)
    first = series * slices - 2 * min(10, series)
    return src, more, first, 2 * min(10, series) + 2 * slices


def _build(
    source: Path, index_dir: Path, encoder: Encoder, workers: int
) -> tuple[BuildReport, SeriesTimes]:
    options = BuildOptions(
        sources=[str(source)], index_dir=index_dir, model_dir=MODEL, workers=workers,
        batch_size=32, io_threads=4, progress=False, imaging=ImagingSettings(),
        encoder=EncoderSettings(provider="cpu", intra_op_threads=1, batch_size=32),
    )  # fmt: skip
    with series_timed() as times:
        report = run_build(options, encoder=encoder)
    return report, times


def build_cost(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    log(f"3. writing {args.build_series} series x {args.slices} slices")
    src, more, first, added = _corpus(tmp / "dicom", args.build_series, args.slices)
    real = Encoder.load(MODEL, EncoderSettings(provider="cpu", intra_op_threads=1))
    manifest = real.manifest.model_copy(update={"embedding_dim": args.build_dim})
    stand_in = StandInEncoder(
        real.model_dir, manifest, None, None, real.tokenizer, "fp32", "stand-in", 32
    )
    workers = os.cpu_count() or 1
    out: dict[str, Any] = {"series": args.build_series, "slices": args.slices,
                           "dim": args.build_dim, "workers": workers}  # fmt: skip
    for name, source, expected in (("first", src, first), ("incremental", more, added)):
        log(f"3. run_build ({name}, {expected} slices)")
        report, times = _build(source, tmp / "index", stand_in, workers)
        if report.indexed != expected:
            raise RuntimeError(f"{name} build indexed {report.indexed} of {expected} slices")
        out[name] = {
            "indexed": report.indexed,
            "steady_images_per_s": report.stages.get("steady_images_per_s"),
            **times.summary(report.seconds),
        }
    return out


# -- report


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "faiss_omp_threads": faiss.omp_get_max_threads(),
    }


def _share(step: dict[str, Any]) -> str:
    steps = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in step["steps_s"].items() if v)
    return (
        f"{step['series_s'] * 1e3:8.1f} ms of {step['whole_s']:7.2f} s = "
        f"{100 * step['series_share']:6.3f}% ({steps})"
    )


def print_report(r: dict[str, Any]) -> None:
    m, ix, e2e, b = r["machine"], r["index"], r["catalog"], r["build"]
    print(
        f"series search benchmark (issue 14): {m['cpu']}, {m['cores']} cores; Python "
        f"{m['python']}, faiss {m['faiss']}, numpy {m['numpy']}; FAISS default threads "
        f"{m['faiss_omp_threads']}"
    )
    print(
        f"1. series index, {ix['series']:,} x {ix['dim']} ({ix['clusters']} clusters; "
        f"{ix['held_out_queries']} held-out + {ix['copy_queries']} indexed queries, k={K})"
    )
    print(
        f"   build_index chose {ix['kind']}: nlist {ix['nlist']}, nprobe {ix['nprobe']} "
        f"(tuned recall@10 {ix['tuned_recall']:.3f}, k-means on {ix['trained_on']:,}), "
        f"built in {ix['build_s']} s"
    )
    print(f"   {'index':<9} {'threads':>7} {'p50 ms':>8} {'p99 ms':>8} {'p50/exact':>9} "
          f"{'recall@10 held-out':>18} {'copies':>7}")  # fmt: skip
    for run in ix["runs"]:
        print(
            f"   {run['index']:<9} {run['threads']:>7} {run['p50_ms']:>8.2f} "
            f"{run['p99_ms']:>8.2f} {run['p50_over_exact']:>9.3f} "
            f"{run['recall_held_out']:>18.3f} {run['recall_copies']:>7.3f}"
        )
    print(f"   target: recall@10 >= {TARGET_RECALL} on held-out queries (build_index's target)")
    print(
        f"2. end to end, SeriesSearcher on a catalog of {e2e['series']:,} series x "
        f"{e2e['items_per_series']} items at {e2e['dim']}-d ({e2e['items']:,} rows, "
        f"{e2e['catalog_mb']} MB; written in {e2e['insert_s']} s): series index "
        f"{e2e['series_index']} (smaller than part 1 to keep the run in minutes)"
    )
    for name, lat in e2e["latency"].items():
        print(f"   {name:<26} p50 {lat['p50_ms']:8.2f} ms  p99 {lat['p99_ms']:8.2f} ms")
    lat = e2e["latency"]
    reads = (lat["search(k=10)"]["p50_ms"] - lat["series index only"]["p50_ms"]) / K
    print(f"   catalog reads of search(k=10): {reads:.2f} ms per result (p50 difference / k)")
    for name, step in e2e["syncs"].items():
        print(f"   sync_index, {name:<15} series {_share(step)}")
    print(
        f"3. build of {b['series']} series x {b['slices']} slices, stand-in encoder "
        f"({b['dim']}-d), {b['workers']} decoder processes"
    )
    for name in ("first", "incremental"):
        step = b[name]
        rate = step["steady_images_per_s"]
        steady = f"{rate:6.1f} images/s steady" if rate else "too short for a steady rate"
        print(
            f"   {name:<11} {step['indexed']:>5} slices, {steady}; series {_share(step)} "
            f"(target <= {100 * TARGET_SHARE:.0f}%)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=100_000, help="series index size")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200, help="held-out queries")
    parser.add_argument("--copies", type=int, default=100, help="queries copied from the index")
    parser.add_argument("--catalog-series", type=int, default=10_000)
    parser.add_argument("--items-per-series", type=int, default=3)
    parser.add_argument("--e2e-queries", type=int, default=60)
    parser.add_argument("--build-series", type=int, default=80)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--build-dim", type=int, default=1024, help="stand-in encoder output")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine(), "index": index_search(args)}
    with tempfile.TemporaryDirectory(prefix="bench-series-") as tmp_name:
        tmp = Path(tmp_name)
        report["catalog"] = catalog_search(args, tmp)
        report["build"] = build_cost(args, tmp)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print_report(report)
    print(f"(whole benchmark {report['seconds']} s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    held = [r["recall_held_out"] for r in report["index"]["runs"] if r["index"] != "exact"]
    shares = [report["build"][k]["series_share"] for k in ("first", "incremental")]
    return 0 if min(held) >= TARGET_RECALL and max(shares) <= TARGET_SHARE else 1


if __name__ == "__main__":
    sys.exit(main())
