"""``medsearch eval`` (leave-one-out retrieval) on a hand-checked index.

Six unit vectors in 2-d at known angles, two labels; a seventh item without the label
and an eighth with an empty one must be neither queries nor candidates. Cosine falls
with the angle between two items, so each query's ranking is its neighbours by angular
distance (all distances distinct). The rankings, written out below by hand, give the
expected precision@k, recall@k and average precision.
"""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from indexer.cli.eval import run_retrieval
from indexer.errors import MedsearchError
from indexer.eval.retrieval import evaluate_retrieval
from indexer.store.catalog import Catalog, ModelBinding, NewItem, catalog_url
from indexer.store.sync import sync_index
from tests.cli.test_cli_embed import medsearch

# name: (angle in degrees, label, modality, study, patient)
ITEMS = {
    "a1": (0, "A", "CT", "s1", "p1"),
    "a2": (10, "A", "CT", "s2", "p1"),
    "b1": (25, "B", "MR", "s1", "p3"),
    "a3": (45, "A", "CT", "s3", "p2"),
    "b2": (60, "B", "MR", "s2", "p3"),
    "b3": (100, "B", "MR", "s3", "p3"),
}
UNLABELLED = {"u1": 5, "u2": 50}  # between a1/a2 and a3/b2: they would change rankings

# Each query's other items, best first (by angular distance), and which share its label.
RANKINGS = {
    "a1": "a2 b1 a3 b2 b3",  # 10 25 45 60 100 degrees
    "a2": "a1 b1 a3 b2 b3",  # 10 15 35 50 90
    "a3": "b2 b1 a2 a1 b3",  # 15 20 35 45 55
    "b1": "a2 a3 a1 b2 b3",  # 15 20 25 35 75
    "b2": "a3 b1 b3 a2 a1",  # 15 35 40 50 60
    "b3": "b2 a3 b1 a2 a1",  # 40 55 75 90 100
}
# Average precision of each ranking, by hand: (1/R) * sum of precision at each relevant.
AP = {
    "a1": Fraction(1, 2) * (Fraction(1, 1) + Fraction(2, 3)),  # relevant at 1, 3
    "a2": Fraction(1, 2) * (Fraction(1, 1) + Fraction(2, 3)),  # 1, 3
    "a3": Fraction(1, 2) * (Fraction(1, 3) + Fraction(2, 4)),  # 3, 4
    "b1": Fraction(1, 2) * (Fraction(1, 4) + Fraction(2, 5)),  # 4, 5
    "b2": Fraction(1, 2) * (Fraction(1, 2) + Fraction(2, 3)),  # 2, 3
    "b3": Fraction(1, 2) * (Fraction(1, 1) + Fraction(2, 3)),  # 1, 3
}
# --exclude same-study: the query's study mates leave the ranking.
AP_SAME_STUDY = {
    "a1": Fraction(1),  # a2 a3 b2 b3: relevant at 1, 2
    "a2": Fraction(1, 2) * (1 + Fraction(2, 3)),  # a1 b1 a3 b3: 1, 3
    "a3": Fraction(1, 2) * (Fraction(1, 3) + Fraction(2, 4)),  # b2 b1 a2 a1: 3, 4
    "b1": Fraction(1, 2) * (Fraction(1, 3) + Fraction(2, 4)),  # a2 a3 b2 b3: 3, 4
    "b2": Fraction(1, 2) * (Fraction(1, 2) + Fraction(2, 3)),  # a3 b1 b3 a1: 2, 3
    "b3": Fraction(1),  # b2 b1 a2 a1: 1, 2
}
KS = (1, 2, 5)


def _vector(degrees: float) -> np.ndarray:
    return np.array([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])


def _hits(query: str, ranking: str, k: int) -> int:
    label = ITEMS[query][1]
    return sum(ITEMS[name][1] == label for name in ranking.split()[:k])


@pytest.fixture(scope="module")
def hand_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The items above written with the Catalog API and published (dimension 2)."""
    index_dir = tmp_path_factory.mktemp("hand_index")
    catalog = Catalog.open(catalog_url(index_dir))
    try:
        binding = ModelBinding("hand-checked", 2, "reference", "full")
        catalog.bind_model(binding)
        run = catalog.start_run("test", ["hand"])
        rows = [(n, a, {"finding": lab}, mod, st, pa) for n, (a, lab, mod, st, pa) in ITEMS.items()]
        rows += [("u1", UNLABELLED["u1"], {"other": "x"}, None, "s1", "p1")]
        rows += [("u2", UNLABELLED["u2"], {"finding": ""}, None, "s2", "p2")]
        items = [
            NewItem(
                identity=name,
                source_uri=f"file:///hand/{name}.png",
                embedding=_vector(angle).astype(np.float32),
                fields={
                    "sha256": name.ljust(64, "0"),
                    "size": 1,
                    "format": "png",
                    "width": 1,
                    "height": 1,
                    "labels": labels,
                    "modality": modality,
                    "study_instance_uid": study,
                    "patient_key": patient,
                },
            )
            for name, angle, labels, modality, study, patient in rows
        ]
        catalog.add_batch(run, items, [])
        sync_index(catalog, index_dir, binding)
    finally:
        catalog.close()
    return index_dir


def _expected(ap: dict[str, Fraction], rankings: dict[str, str]) -> dict[str, object]:
    """precision@k, recall@k and mAP overall and per label, from the rankings above."""

    def means(queries: list[str]) -> dict[str, object]:
        relevant = {
            q: sum(ITEMS[n][1] == ITEMS[q][1] for n in rankings[q].split()) for q in queries
        }
        return {
            "queries": len(queries),
            "precision_at_k": {
                str(k): float(sum(Fraction(_hits(q, rankings[q], k), k) for q in queries))
                / len(queries)
                for k in KS
            },
            "recall_at_k": {
                str(k): float(sum(Fraction(_hits(q, rankings[q], k), relevant[q]) for q in queries))
                / len(queries)
                for k in KS
            },
            "mean_average_precision": float(sum(ap[q] for q in queries) / len(queries)),
        }

    out = means(list(ITEMS))
    out["per_label"] = {
        label: means([q for q in ITEMS if ITEMS[q][1] == label]) for label in ("A", "B")
    }
    return out


def _check(report: dict[str, object], expected: dict[str, object]) -> None:
    for key in ("queries", "precision_at_k", "recall_at_k", "mean_average_precision"):
        assert report[key] == pytest.approx(expected[key], abs=1e-9), key
    per_label = report["per_label"]
    assert isinstance(per_label, dict)
    for label, values in expected["per_label"].items():  # type: ignore[attr-defined]
        for key, value in values.items():
            assert per_label[label][key] == pytest.approx(value, abs=1e-9), (label, key)


def test_hand_values_are_what_they_say() -> None:
    """The hand-written rankings are the true ones (so the test checks the code, not them)."""
    for query, ranking in RANKINGS.items():
        others = [n for n in ITEMS if n != query]
        cosine = {n: float(_vector(ITEMS[n][0]) @ _vector(ITEMS[query][0])) for n in others}
        assert sorted(others, key=lambda n: -cosine[n]) == ranking.split()
    assert float(sum(AP.values()) / 6) == pytest.approx((5 / 6 * 3 + 5 / 12 + 13 / 40 + 7 / 12) / 6)


def test_cli_json_equals_hand_computed_values(hand_index: Path) -> None:
    run = medsearch(
        "eval", "--index", str(hand_index), "--label", "finding", "--k", "5,1,2", "--json"
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    _check(report, _expected(AP, RANKINGS))
    assert report["items"] == 6 and report["unlabelled"] == 2
    assert report["label_source"] == "sidecar" and report["exclude"] == "none"
    assert report["k"] == [1, 2, 5] and report["skipped_queries"] == 0
    assert report["precision_curve"][0] == report["precision_at_k"]["1"]
    assert len(report["precision_curve"]) == 5
    # by hand: 6 queries, top-1 relevant for a1 a2 b3 -> 1/2; top 2 holds 1+1+0+0+1+1 -> 1/3
    assert report["precision_at_k"]["1"] == pytest.approx(0.5)
    assert report["precision_at_k"]["2"] == pytest.approx(Fraction(4, 12))
    assert report["mean_average_precision"] == pytest.approx(
        float((Fraction(5, 6) * 3 + Fraction(5, 12) + Fraction(13, 40) + Fraction(7, 12)) / 6)
    )


def test_cli_exclude_same_study(hand_index: Path) -> None:
    run = medsearch(
        "eval", "--index", str(hand_index), "--label", "finding", "--k", "1,2,5",
        "--exclude", "same-study", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    rankings = {
        q: " ".join(n for n in RANKINGS[q].split() if ITEMS[n][3] != ITEMS[q][3]) for q in ITEMS
    }
    assert rankings["a1"] == "a2 a3 b2 b3" and rankings["b3"] == "b2 b1 a2 a1"
    report = json.loads(run.stdout)
    _check(report, _expected(AP_SAME_STUDY, rankings))
    assert report["exclude"] == "same-study"


def test_dicom_attribute_as_label_and_text_output(hand_index: Path) -> None:
    """``modality`` (CT for A, MR for B) is a DICOM attribute: the same numbers."""
    report = run_retrieval(hand_index, "modality", ks=list(KS))
    assert report.label_source == "attribute"
    assert report.unlabelled == 2  # u1, u2 have no modality
    assert report.mean_average_precision == pytest.approx(float(sum(AP.values()) / 6))
    assert set(report.per_label) == {"CT", "MR"}
    run = medsearch("eval", "--index", str(hand_index), "--label", "modality")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "(all)" in run.stdout and "CT" in run.stdout and "MR" in run.stdout


def test_same_patient_skips_queries_without_relevant_candidates(hand_index: Path) -> None:
    """Patients: p1 = a1, a2; p2 = a3; p3 = b1, b2, b3. Every B query loses all of its
    relevant candidates: skipped. a1 and a2 lose each other: a3 is their only relevant."""
    report = run_retrieval(hand_index, "finding", ks=[1, 2], exclude="same-patient")
    assert report.skipped_queries == 3 and report.queries == 3
    assert report.skipped_labels == ["B"] and set(report.per_label) == {"A"}
    # a1: b1 a3 b2 b3 -> AP 1/2; a2: b1 a3 b2 b3 -> 1/2; a3: b2 b1 a2 a1 b3 -> 5/12
    assert report.mean_average_precision == pytest.approx((0.5 + 0.5 + 5 / 12) / 3)
    assert report.recall_at_k[2] == pytest.approx((1 + 1 + 0) / 3)
    assert report.precision_at_k[1] == pytest.approx(0.0)


def test_ap_depth_truncates(hand_index: Path) -> None:
    """Depth 2: the sum stops at position 2 and is divided by min(R, 2) = 2."""
    report = run_retrieval(hand_index, "finding", ks=[1, 2], ap_depth=2)
    # a1, a2, b3: relevant at 1 -> 1/2; a3, b1: none in the top 2 -> 0; b2: at 2 -> 1/4
    assert report.mean_average_precision == pytest.approx((0.5 * 3 + 0.25) / 6)
    assert report.ap_depth == 2
    with pytest.raises(MedsearchError, match="at least the largest k"):
        run_retrieval(hand_index, "finding", ks=[1, 5], ap_depth=2)


def test_refusals(hand_index: Path, tmp_path: Path) -> None:
    run = medsearch("eval", "--index", str(hand_index), "--label", "nope", "--json")
    assert run.returncode == 2
    assert "no sidecar column or DICOM attribute 'nope'" in run.stderr
    assert "finding" in run.stderr and "Traceback" not in run.stderr
    run = medsearch("eval", "--index", str(tmp_path / "missing"), "--label", "finding")
    assert run.returncode == 2 and "no index here" in run.stderr
    run = medsearch("eval", "--index", str(hand_index), "--label", "finding", "--k", "0,x")
    assert run.returncode == 2 and "--k" in run.stderr
    run = medsearch("eval", "--label", "finding")
    assert run.returncode == 2 and "--index" in run.stderr


def test_plot_without_matplotlib_says_how_to_install_it(hand_index: Path, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    run = medsearch(
        "eval", "--index", str(hand_index), "--label", "finding", "--plot", str(tmp_path / "p.png"),
        env={"PYTHONPATH": f"{shadow.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )  # fmt: skip
    assert run.returncode == 2 and "pip install 'medsearch[plot]'" in run.stderr
    assert not (tmp_path / "p.png").exists()


def test_blocks_sampling_and_ties_agree_with_a_plain_implementation() -> None:
    """Random data, several block sizes, study groups and exact ties against a loop."""
    rng = np.random.default_rng(7)
    n = 40
    vectors = rng.standard_normal((n, 3)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[5] = vectors[4]  # an exact tie: ranked non-relevant first
    labels = [str(v) for v in rng.integers(0, 3, n)]
    labels[4], labels[5], labels[6] = "0", "1", "1"
    groups = rng.integers(-1, 8, n)

    def plain(query: int) -> tuple[float, list[int], int]:
        cands = [
            j
            for j in range(n)
            if j != query and not (groups[query] >= 0 and groups[j] == groups[query])
        ]
        score = {j: float(vectors[j] @ vectors[query]) for j in cands}
        order = sorted(cands, key=lambda j: (-score[j], labels[j] == labels[query]))
        rel = [labels[j] == labels[query] for j in order]
        found = np.cumsum(rel)
        ap = sum(found[i] / (i + 1) for i in range(len(rel)) if rel[i]) / max(sum(rel), 1)
        return ap, [int(found[min(k, len(rel)) - 1]) for k in (1, 3, 10)], sum(rel)

    expected = {q: plain(q) for q in range(n)}
    for block in (1, 3, 64):
        scores = evaluate_retrieval(vectors, labels, groups=groups, ks=(1, 3, 10), block=block)
        valid = [q for q in range(n) if expected[q][2] > 0]
        assert scores.queries == len(valid) and scores.skipped_queries == n - len(valid)
        assert scores.mean_average_precision == pytest.approx(
            np.mean([expected[q][0] for q in valid]), abs=1e-12
        )
        assert scores.precision_at_k[3] == pytest.approx(
            np.mean([expected[q][1][1] / 3 for q in valid]), abs=1e-12
        )
    sample = evaluate_retrieval(vectors, labels, ks=(1,), queries=10, seed=3)
    again = evaluate_retrieval(vectors, labels, ks=(1,), queries=10, seed=3)
    assert sample.queries + sample.skipped_queries == 10 and sample == again
