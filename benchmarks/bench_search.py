"""Benchmark vector search: recall@10 and single-query latency against exact search.

For each size N, synthetic L2-normalised vectors whose neighbours are not trivially
separable (see :func:`mixture`) are indexed with

- ``flat``: the exact baseline (``IndexIDMap2(IndexFlatIP)``), measured in the same run;
- the default index (``build_index`` with its defaults: ``ivf_sq8`` from 20k vectors,
  ``nlist`` from N, ``nprobe`` tuned at build time to recall@10 >= 0.95), searched for
  ``10 * rerank_factor`` candidates re-ranked exactly with float32 vectors held in memory
  (looked up by id with a binary search, as :class:`~indexer.store.rerank_store.RerankStore`
  does in the service); measured twice: with the threads sharing one query's lists (as
  built and loaded) and with one thread per query (FAISS's own default, ``parallel_mode``
  0), to show what that setting gives;
- ``ivf_flat``, the previous default (float32 lists, no re-ranking);
- up to ``--compare-up-to`` vectors also ``ivf_pq`` (8-bit codes, 8x candidates).

Held-out queries (same distribution, not in the index) are searched one at a time after
a warm-up; recall@10 is against exact search over all N vectors. Memory per vector is
the serialized index size over N (in RAM an ``IndexIDMap2`` adds a hash map entry per id,
about 16-32 bytes). A plan for 10M and 100M vectors is derived from the numbers.

Usage::

    python benchmarks/bench_search.py --sizes 20000 --dim 128        # smoke test
    python benchmarks/bench_search.py --sizes 100000,1000000 --dim 1024 --queries 200 \\
        --json benchmarks/_work/bench_search.json

Generating 1M x 1024 float32 takes 4 GB (built in chunks); the exact baseline copies it
once (freed before the next index), the IVF-Flat build holds its 1.6 GB training sample
and the index: ~10 GB peak. On 2 cores the 1M run takes ~13 minutes, ~11 of them the
default build (k-means on 409,600 points into 4,096 lists, adding 1M vectors, tuning).
Exit status 1 when the default index misses recall@10 >= 0.95 on the held-out queries.
Memory per vector: the index's bytes plus, for re-ranked kinds, the float32 store
(``4 * dim``; in the catalog instead with ``MEDSEARCH_RERANK_STORE=catalog``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexer.store.index_params import (  # noqa: E402
    choose_nlist,
    pq_m,
    training_size,
    uses_hnsw_quantizer,
)
from indexer.store.vector_index import BuiltIndex, build_index, rerank, search  # noqa: E402

Vectors = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]
K = 10
TARGET_RECALL = 0.95
CHUNK = 65_536


def _normalise(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    out: npt.NDArray[Any] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def mixture(n: int, dim: int, seed: int, stream: int, *, clusters: int) -> Vectors:
    """``n`` unit vectors: a Gaussian mixture with shared low-rank structure and noise.

    The structure (seeded by ``seed``) is shared by every ``stream`` (1: the collection,
    2: the queries): ``clusters`` centres in super-clusters of 16 (centres of a group are
    correlated, as studies of one body part are), visited with skewed frequencies; within
    a cluster, points spread along a shared 64-d subspace, further than the centres are
    apart (so neighbourhoods cross cluster borders), plus isotropic noise. A query's 1st
    and 10th neighbours differ by ~0.06 in cosine and an IVF must probe a few percent of
    its lists: not trivially separable. Generated in chunks (1M x 1024 is 4 GB).
    """
    rank = 64
    base = np.random.default_rng([seed, 0])
    groups = _normalise(base.standard_normal((max(1, clusters // 16), dim)))
    own = _normalise(base.standard_normal((clusters, dim)))
    centres = _normalise(groups[np.arange(clusters) % len(groups)] + 0.7 * own)
    basis = np.linalg.qr(base.standard_normal((dim, rank)))[0]
    spread = base.uniform(1.0, 2.0, clusters)
    weights = 1.0 / np.sqrt(np.arange(1, clusters + 1))
    weights /= weights.sum()
    out = np.empty((n, dim), dtype=np.float32)
    for i, lo in enumerate(range(0, n, CHUNK)):
        m = min(CHUNK, n - lo)
        rng = np.random.default_rng([seed, stream, i])
        labels = rng.choice(clusters, size=m, p=weights)
        z = rng.standard_normal((m, rank)) * (spread[labels, None] / math.sqrt(rank))
        x = centres[labels] + z @ basis.T
        x += rng.standard_normal((m, dim)) * (0.5 / math.sqrt(dim))
        out[lo : lo + m] = _normalise(x)
    return out


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def serialized_bytes(index: faiss.Index) -> int:
    size = 0

    def count(chunk: bytes) -> int:
        nonlocal size
        size += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count)  # type: ignore[attr-defined]
    faiss.write_index(index, writer)
    del writer
    return size


def timed_queries(
    one: Callable[[Vectors], Ids], queries: Vectors
) -> tuple[list[Ids], float, float]:
    for q in queries[: min(10, len(queries))]:  # warm-up
        one(q[None])
    found, seconds = [], []
    for q in queries:
        start = time.perf_counter()
        found.append(one(q[None]))
        seconds.append(time.perf_counter() - start)
    p50, p99 = percentiles(seconds)
    return found, p50, p99


def recall_at_k(found: list[Ids], truth: Ids) -> float:
    hits = sum(np.intersect1d(f[:K], t).size for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def measure(
    name: str, built: BuiltIndex, x: Vectors, queries: Vectors, truth: Ids, seconds: float
) -> dict[str, Any]:
    facts = built.facts
    ids = np.arange(x.shape[0], dtype=np.int64)  # the store's sorted ids (row numbers here)

    def held(wanted: Ids) -> Vectors:  # RerankStore.vectors: a binary search by id
        return x[np.searchsorted(ids, wanted)]

    def one(q: Vectors) -> Ids:
        if not facts.needs_rerank:
            return search(built.index, q, K)[1][0]
        candidates = search(built.index, q, K * facts.rerank_factor)[1][0]
        return rerank(q[0], candidates, held, K)[1]

    found, p50, p99 = timed_queries(one, queries)
    index_bytes = serialized_bytes(built.index) / x.shape[0]
    store_bytes = 4 * x.shape[1] if facts.needs_rerank else 0
    row = {
        "index": name,
        "kind": facts.kind,
        "build_s": round(seconds, 1),
        "nlist": facts.nlist,
        "nprobe": facts.nprobe,
        "tuned_recall": round(facts.recall_at_10, 4),
        "recall_at_10": round(recall_at_k(found, truth), 4),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "bytes_per_vector": round(index_bytes, 1),
        "rerank_bytes_per_vector": store_bytes,
        "parallel_mode": int(getattr(built.index, "parallel_mode", 0)),
        "facts": facts.model_dump(),
    }
    log(f"  {name}: {json.dumps({k: v for k, v in row.items() if k != 'facts'})}")
    return row


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bench_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    clusters = max(64, int(math.sqrt(n)))
    log(f"N={n}: generating {n} x {args.dim} ({clusters} clusters)")
    x = mixture(n, args.dim, args.seed, 1, clusters=clusters)
    queries = mixture(args.queries, args.dim, args.seed, 2, clusters=clusters)
    ids = np.arange(n, dtype=np.int64)
    sims, truth = faiss.knn(queries, x, K, metric=faiss.METRIC_INNER_PRODUCT)
    rows = []
    kinds: list[tuple[str, dict[str, Any]]] = [("flat", {"kind": "flat"}), ("default", {})]
    kinds += [("ivf_flat", {"compress": "none"})]
    if n <= args.compare_up_to:
        kinds += [("ivf_pq", {"compress": "pq"})]
    for name, kwargs in kinds:
        log(f"N={n}: building {name}")
        start = time.perf_counter()
        built = build_index(ids, x, seed=args.seed, **kwargs)
        seconds = time.perf_counter() - start
        rows.append(measure(name, built, x, queries, truth, seconds))
        if built.index.__class__ is not faiss.IndexIDMap2 and built.index.parallel_mode == 1:
            built.index.parallel_mode = 0  # FAISS's default: one thread per query
            label = f"{name}, 1 thread/query"
            rows.append(measure(label, built, x, queries, truth, seconds))
        del built
    exact = rows[0]
    for row in rows:
        row["latency_ratio"] = round(row["p50_ms"] / exact["p50_ms"], 4)
    return {
        "n": n,
        "dim": args.dim,
        "clusters": clusters,
        "queries": args.queries,
        "neighbour_cosine": {"1st": float(sims[:, 0].mean()), "10th": float(sims[:, -1].mean())},
        "rows": rows,
    }


def plan(results: list[dict[str, Any]], dim: int) -> list[str]:
    """Memory, build time and latency at 10M and 100M, extrapolated from the largest run.

    Memory is codes + ids (+ centroids); build time scales with points x lists (k-means on
    ``training_size`` points and assigning every vector are both ``O(points * nlist * d)``);
    single-query latency with ``sqrt(N)`` (nlist ~ sqrt(N): each probed list holds
    ~ sqrt(N) vectors), assuming the tuned nprobe stays the same (it tends to grow a
    little, so these are lower bounds).
    """
    last = results[-1]
    n = last["n"]
    default = next(r for r in last["rows"] if r["index"] == "default")
    m = pq_m(dim)
    lines = [
        f"measured at {n:,}: "
        + ", ".join(f"{r['index']} {r['bytes_per_vector']:.0f} B/vector" for r in last["rows"])
    ]
    for big in (10_000_000, 100_000_000):
        nlist = choose_nlist(big)
        centroids = nlist * dim * 4
        store = big * 4 * dim / 1e9  # the float32 re-rank vectors (memory or catalog)
        gb = {
            "ivf_flat": (big * (4 * dim + 8) + centroids) / 1e9,
            "ivf_sq8": (big * (dim + 8) + centroids) / 1e9,
            "ivf_pq": (big * (m + 8) + centroids) / 1e9,
        }
        work = (training_size(big, nlist) * 10 + big) * nlist  # 10 k-means iterations + add
        if default["nlist"]:
            facts = default["facts"]
            work_n = (facts["trained_on"] * 10 + n) * default["nlist"]
            build = f"~{default['build_s'] * work / work_n / 3600:.1f} h on this CPU"
        else:
            build = "n/a"
        p50 = default["p50_ms"] * math.sqrt(big / n)
        lines.append(
            f"{big // 1_000_000}M x {dim}-d: nlist {nlist} (HNSW quantizer: "
            f"{'yes' if uses_hnsw_quantizer(nlist) else 'no'}); index RAM ivf_sq8 "
            f"{gb['ivf_sq8']:.0f} GB (+ {store:.0f} GB float32 re-rank store in memory, or "
            f"read from the catalog), ivf_flat {gb['ivf_flat']:.0f} GB, ivf_pq (m={m}) "
            f"{gb['ivf_pq']:.1f} GB; build {build}; default p50 >= ~{p50:.1f} ms"
        )
    lines.append(
        "10M: ivf_sq8 (the default) with the re-rank store in memory if RAM allows (~51 GB "
        "in all), else MEDSEARCH_RERANK_STORE=catalog (~10 GB); train and add on a GPU "
        "(faiss-gpu): k-means over 16k lists is hours on this CPU."
    )
    lines.append(
        "100M: ivf_pq + re-rank from the catalog (8x candidates) on one host, or ivf_sq8 "
        "sharded over hosts; HNSW coarse quantizer (from 8192 lists), GPU training."
    )
    return lines


def print_table(results: list[dict[str, Any]]) -> None:
    head = (
        f"{'N':>9} {'index':>24} {'nlist':>6} {'nprobe':>6} {'tuned':>6} {'recall':>6} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'p50/x':>6} {'B/vec':>7} {'+store':>6} {'build s':>8}"
    )
    print(head)
    print("-" * len(head))
    for res in results:
        for r in res["rows"]:
            print(
                f"{res['n']:>9} {r['index']:>24} {r['nlist']:>6} {r['nprobe']:>6} "
                f"{r['tuned_recall']:>6.3f} {r['recall_at_10']:>6.3f} {r['p50_ms']:>8.2f} "
                f"{r['p99_ms']:>8.2f} {r['latency_ratio']:>6.3f} {r['bytes_per_vector']:>7.0f} "
                f"{r['rerank_bytes_per_vector']:>6} {r['build_s']:>8.1f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-up-to", type=int, default=200_000, help="sq8/pq up to N")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results = [bench_size(n, args) for n in sizes]
    print_table(results)
    lines = plan(results, args.dim)
    print("\nplan (on paper):")
    for line in lines:
        print(f"- {line}")
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "faiss": faiss.__version__,
            "omp_threads": faiss.omp_get_max_threads(),
        },
        "results": results,
        "plan": lines,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    default_recall = [
        r["recall_at_10"] for res in results for r in res["rows"] if r["index"] == "default"
    ]
    return 0 if all(r >= TARGET_RECALL for r in default_recall) else 1


if __name__ == "__main__":
    sys.exit(main())
