"""``medsearch eval zero-shot`` on a real small index (the test model, a sidecar CSV of
labels), against accuracy, confusion matrix and AUC computed here from the encoder."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from indexer.encoders.encoder import Encoder
from indexer.eval.zero_shot import auc
from indexer.pipeline.runner import open_catalog, run_build
from tests.cli.test_cli_embed import medsearch
from tests.pipeline.conftest import TEST_MODEL, options

FILES = {  # file: its label in the sidecar CSV ("" : a row with an empty label)
    "CT_small.dcm": "ct",
    "MR_small.dcm": "mr",
    "MR2_UNCR.dcm": "mr",
    "US1_UNCR.dcm": "us",
    "OBXXXX1A.dcm": "us",
    "SC_rgb.dcm": "photo",  # no prompts: left out, counted in `unmatched`
    "emri_small.dcm": "",  # an empty label: not evaluated
}
PROMPTS = [  # ct has two prompts: their embeddings are averaged
    ("ct", "computed tomography axial slice"),
    ("mr", "magnetic resonance image of the brain"),
    ("ct", "ct scan"),
    ("us", "ultrasound image"),
]


@pytest.fixture(scope="module")
def labelled_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zero_shot")
    data = root / "data"
    data.mkdir()
    for name in FILES:
        src = get_testdata_file(name)
        assert src is not None, name
        shutil.copy(src, data / name)
    sidecar = root / "labels.csv"
    sidecar.write_text("path,finding\n" + "".join(f"{n},{lab}\n" for n, lab in FILES.items()))
    index_dir = root / "index"
    report = run_build(options([str(data)], index_dir, sidecar=sidecar))
    assert report.indexed == len(FILES) and not report.failed, report.to_dict()
    return index_dir


@pytest.fixture()
def prompts_csv(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.csv"
    path.write_text("label,prompt\n" + "".join(f"{lab},{text}\n" for lab, text in PROMPTS))
    return path


def _catalog_items(index_dir: Path) -> tuple[np.ndarray, list[str]]:
    catalog = open_catalog(index_dir, read_only=True)
    try:
        ids, vectors = next(catalog.vectors())
        records = catalog.items(ids.tolist())
    finally:
        catalog.close()
    labels = [(records[int(i)].labels or {}).get("finding", "") for i in ids]
    return vectors, labels


def test_cli_equals_values_computed_from_the_encoder(
    labelled_index: Path, prompts_csv: Path, encoder: Encoder, tmp_path: Path
) -> None:
    classes = ["ct", "mr", "us"]  # the prompts file's order
    text = {lab: encoder.embed_texts([t for la, t in PROMPTS if la == lab]) for lab in classes}
    means = np.stack([text[lab].mean(axis=0) for lab in classes])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    vectors, labels = _catalog_items(labelled_index)
    keep = [i for i, lab in enumerate(labels) if lab in classes]
    truth = np.array([classes.index(labels[i]) for i in keep])
    logits = np.exp(encoder.logit_scale) * (vectors[keep].astype(np.float64) @ means.T)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    predicted = probs.argmax(axis=1)
    confusion = [[int(((truth == i) & (predicted == j)).sum()) for j in range(3)] for i in range(3)]

    def pairwise_auc(c: int) -> float:
        pos, neg = probs[truth == c, c], probs[truth != c, c]
        wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
        return wins / (len(pos) * len(neg))

    plot = tmp_path / "confusion.png"
    run = medsearch(
        "eval", "zero-shot", "--index", str(labelled_index), "--label", "finding",
        "--prompts", str(prompts_csv), "--model", str(TEST_MODEL), "--json", "--plot", str(plot),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["labels"] == classes and report["items"] == len(keep) == 5
    assert report["unmatched"] == {"photo": 1} and report["unlabelled"] == 1
    assert report["confusion"] == confusion
    assert report["accuracy"] == pytest.approx(float((predicted == truth).mean()))
    for c, name in enumerate(classes):
        assert report["per_class_auc"][name] == pytest.approx(pairwise_auc(c), abs=1e-9)
    assert report["logit_scale"] == pytest.approx(encoder.logit_scale)
    assert report["prompts"]["ct"] == ["computed tomography axial slice", "ct scan"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_output_and_model_mismatch(
    labelled_index: Path, prompts_csv: Path, tmp_path: Path
) -> None:
    run = medsearch(
        "eval", "zero-shot", "--index", str(labelled_index), "--label", "finding",
        "--prompts", str(prompts_csv), "--model", str(TEST_MODEL),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "accuracy" in run.stdout and "left out (no prompts for their label): photo (1)" in (
        run.stdout
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("label,text\nct,x\n")
    run = medsearch(
        "eval", "zero-shot", "--index", str(labelled_index), "--label", "finding",
        "--prompts", str(bad), "--model", str(TEST_MODEL),
    )  # fmt: skip
    assert run.returncode == 2 and "label,prompt" in run.stderr


def test_retrieval_plot(labelled_index: Path, tmp_path: Path) -> None:
    plot = tmp_path / "curve.png"
    run = medsearch(
        "eval", "--index", str(labelled_index), "--label", "finding", "--k", "1,3",
        "--plot", str(plot), "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    # ct and photo have one item each: their queries have no relevant candidate
    assert report["skipped_queries"] == 2 and report["skipped_labels"] == ["ct", "photo"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_auc_is_the_pairwise_probability_with_half_ties() -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(30), 1)  # many ties
    positive = rng.random(30) < 0.4
    pos, neg = scores[positive], scores[~positive]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    assert auc(scores, positive) == pytest.approx(wins / (len(pos) * len(neg)))
    assert auc(scores, np.zeros(30, dtype=bool)) is None
