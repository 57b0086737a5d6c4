"""Benchmark ``medsearch eval`` (leave-one-out retrieval) at 10^5 items x 1024-d.

Synthetic L2-normalised vectors: ``--labels`` classes, each a random centre plus
Gaussian noise strong enough that classes overlap (precision@10 well below 1), with
``--studies`` items per study so ``--exclude same-study`` has work to do.

Two paths:

- default: a catalog is written with the Catalog API (``NewItem`` rows with a sidecar
  ``labels`` column and a Study Instance UID) into a temporary index directory, then
  evaluated by ``run_retrieval`` (what ``medsearch eval`` runs: reading the labelled items
  from the catalog, then the computation); the load and the computation are timed apart;
- ``--arrays``: the computation alone (``evaluate_retrieval`` on the arrays in memory).

Usage::

    python benchmarks/bench_eval.py --items 5000 --dim 256          # smoke test
    python benchmarks/bench_eval.py --items 100000 --dim 1024       # the issue's size
    python benchmarks/bench_eval.py --items 100000 --dim 1024 --arrays --ap-depth 100

The 10^5 catalog is ~450 MB on disk (deleted at the end) and the run holds ~1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexer.eval.retrieval import Exclude, evaluate_retrieval  # noqa: E402


def synthetic(
    items: int, dim: int, labels: int, per_study: int, seed: int
) -> tuple[npt.NDArray[np.float32], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((labels, dim)).astype(np.float32)
    label_of = rng.integers(0, labels, items)
    vectors = np.empty((items, dim), dtype=np.float32)
    # a class's items share cosine ~1/(1+sigma^2); unrelated pairs scatter ~sigma^2/((1+sigma^2)
    # sqrt(dim)): at sigma = dim^(1/4) the gap is about one spread, so classes overlap
    sigma = np.float32(dim**0.25)
    for start in range(0, items, 10_000):
        part = slice(start, min(start + 10_000, items))
        noise = rng.standard_normal((part.stop - start, dim)).astype(np.float32) * sigma
        vectors[part] = centres[label_of[part]] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = [f"class{c}" for c in label_of]
    studies = [f"1.2.826.0.1.{i // per_study}" for i in range(items)]
    return vectors, names, studies


def write_catalog(
    index_dir: Path, vectors: npt.NDArray[np.float32], labels: list[str], studies: list[str]
) -> None:
    from indexer.store.catalog import Catalog, ModelBinding, NewItem, catalog_url

    catalog = Catalog.open(catalog_url(index_dir))
    try:
        catalog.bind_model(ModelBinding("bench-eval", vectors.shape[1], "reference", "full"))
        run = catalog.start_run("bench_eval", ["synthetic"])
        for start in range(0, len(labels), 5_000):
            batch = [
                NewItem(
                    identity=f"item-{i}",
                    source_uri=f"synthetic:///{i}",
                    embedding=vectors[i],
                    fields={
                        "sha256": f"{i:064x}",
                        "size": 0,
                        "format": "synthetic",
                        "width": 1,
                        "height": 1,
                        "study_instance_uid": studies[i],
                        "labels": {"finding": labels[i]},
                    },
                )
                for i in range(start, min(start + 5_000, len(labels)))
            ]
            catalog.add_batch(run, batch, [])
        catalog.finish_run(run, {"items": len(labels)})
    finally:
        catalog.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--studies", type=int, default=4, help="items per study")
    parser.add_argument("--k", default="1,5,10")
    parser.add_argument("--exclude", default="same-study")
    parser.add_argument("--ap-depth", type=int, default=None)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--arrays", action="store_true", help="the computation alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    ks = [int(k) for k in args.k.split(",")]
    exclude: Exclude = args.exclude

    started = time.perf_counter()
    vectors, labels, studies = synthetic(args.items, args.dim, args.labels, args.studies, args.seed)
    out: dict[str, Any] = {
        "items": args.items,
        "dim": args.dim,
        "labels": args.labels,
        "exclude": exclude,
        "ap_depth": args.ap_depth,
        "queries": args.queries,
        "path": "arrays" if args.arrays else "catalog",
        "machine": f"{platform.processor() or platform.machine()}",
        "generate_s": round(time.perf_counter() - started, 1),
    }
    if args.arrays:
        from indexer.eval.dataset import group_codes

        groups = group_codes(studies) if exclude == "same-study" else None
        started = time.perf_counter()
        scores = evaluate_retrieval(
            vectors, labels, groups=groups, ks=ks, ap_depth=args.ap_depth, queries=args.queries
        )
        out["eval_s"] = round(time.perf_counter() - started, 1)
        out["report"] = scores.model_dump(exclude={"per_label", "precision_curve"})
    else:
        from indexer.cli.eval import run_retrieval
        from indexer.eval.dataset import load_labelled
        from indexer.pipeline.runner import open_catalog

        workdir = Path(tempfile.mkdtemp(prefix="bench_eval_"))
        try:
            started = time.perf_counter()
            write_catalog(workdir, vectors, labels, studies)
            out["write_catalog_s"] = round(time.perf_counter() - started, 1)
            del vectors
            started = time.perf_counter()
            catalog = open_catalog(workdir, read_only=True)
            try:
                load_labelled(catalog, "finding")
            finally:
                catalog.close()
            out["load_s"] = round(time.perf_counter() - started, 1)
            report = run_retrieval(
                workdir,
                "finding",
                ks=ks,
                exclude=exclude,
                ap_depth=args.ap_depth,
                queries=args.queries,
            )
            out["eval_s"] = report.seconds  # load + computation, as `medsearch eval` runs it
            out["report"] = report.model_dump(exclude={"per_label", "precision_curve"})
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
