"""``medsearch index outliers`` as a user runs it (a subprocess), and the exact scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from indexer.pipeline.runner import open_catalog
from indexer.store.outliers import ItemScores, catalog_scores, exact_scores, reference_scores
from indexer.store.sync import index_store
from tests.cli.test_cli_embed import medsearch
from tests.curate.conftest import SLICES, CurateCorpus


def _outliers(index: Path, *extra: str) -> dict[str, object]:
    run = medsearch("index", "outliers", "--index", str(index), "--json", *extra)
    assert run.returncode == 0, run.stderr[-2000:]
    result: dict[str, object] = json.loads(run.stdout)
    return result


def test_the_planted_odd_image_tops_the_outliers(curate_corpus: CurateCorpus) -> None:
    result = _outliers(curate_corpus.index_dir)
    rows = result["outliers"]
    assert isinstance(rows, list) and len(rows) == SLICES  # every item: 24 slices + planted
    assert result["k"] == 10
    assert rows[0]["source_uri"] == curate_corpus.planted.as_uri()
    assert rows[0]["percentile"] == 1.0
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 10 * scores[1]  # not a close call: noise among CT slices
    assert [row["percentile"] for row in rows] == [(len(rows) - i) / len(rows) for i in range(25)]
    assert {row["id"] for row in rows} == set(range(1, len(rows) + 1))

    top = _outliers(curate_corpus.index_dir, "--top", "3", "--k", "100")["outliers"]
    assert isinstance(top, list) and len(top) == 3
    assert top[0]["source_uri"] == curate_corpus.planted.as_uri()


def test_the_text_listing_and_refusals(curate_corpus: CurateCorpus, tmp_path: Path) -> None:
    run = medsearch("index", "outliers", "--index", str(curate_corpus.index_dir), "--top", "2")
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 3 and lines[1].endswith(curate_corpus.planted.as_uri())
    run = medsearch("index", "outliers", "--index", str(tmp_path / "none"))
    assert run.returncode == 2 and "no index here" in run.stderr
    run = medsearch("index", "outliers", "--index", str(curate_corpus.index_dir), "--k", "0")
    assert run.returncode == 2


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_scores_match_a_brute_force_leave_one_out() -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 300, 16)
    vectors[5] = vectors[4]  # a duplicate pair: each is the other's nearest, at distance 0
    ids = np.arange(100, 400, dtype=np.int64)
    scored = exact_scores(ids, vectors, 7)

    sims = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    nearest = -np.sort(-sims, axis=1)[:, :7]
    np.testing.assert_allclose(scored.scores, np.mean(1 - nearest, axis=1), atol=1e-5)
    assert scored.k == 7 and list(scored.ids) == list(ids)


def test_percentiles_count_lower_or_equal_scores() -> None:
    scored = ItemScores(np.arange(5), np.array([0.1, 0.3, 0.3, 0.2, 0.9]), 3)
    assert list(scored.percentiles()) == [0.2, 0.8, 0.8, 0.4, 1.0]


def test_a_sampled_reference_holds_the_items_exact_scores(curate_corpus: CurateCorpus) -> None:
    catalog = open_catalog(curate_corpus.index_dir, read_only=True)
    try:
        loaded = index_store(curate_corpus.index_dir).load()
        reference = reference_scores(loaded, catalog, 10, sample=10, seed=3)
        exact = catalog_scores(catalog, 10)
    finally:
        catalog.close()
    assert reference.sampled and reference.index_items == SLICES and reference.k == 10
    assert len(reference.scores) == 10
    assert list(reference.scores) == sorted(reference.scores)
    for score in reference.scores:  # a flat index: each sampled item's own exact score
        assert np.min(np.abs(exact.scores - score)) < 1e-5
    assert reference.percentile(float(exact.scores.max())) == 1.0
    assert reference.percentile(-1.0) == 0.0
