"""``medsearch index label`` as a subprocess, then the label column through the live API:
every item gets one of the labels, its probability agrees with ``/v1/classify``, the
column filters searches, sidecar columns are kept and a rerun overwrites the column."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from indexer.encoders.zero_shot import label_vectors, probabilities
from service.app import create_app
from tests.cli.test_cli_embed import medsearch
from tests.curate.conftest import SLICES, CurateCorpus
from tests.service.conftest import TEST_MODEL, settings_for
from tests.service.live import serve

ORGANS = {"liver": ["ct abdomen liver"], "lung": ["ct chest lung"]}
ENSEMBLE = {
    "head": ["ct head brain", "mri head"],
    "chest": ["x-ray chest", "ct chest lung", "ct thorax"],
    "noise": ["random colour noise"],
}


def _prompts(path: Path, table: dict[str, list[str]]) -> Path:
    rows = [f'{label},"{prompt}"' for label, prompts in table.items() for prompt in prompts]
    path.write_text("label,prompt\n" + "\n".join(rows) + "\n")
    return path


def _label(index: Path, prompts: Path, name: str = "organ") -> dict[str, object]:
    run = medsearch(
        "index", "label", "--index", str(index), "--model", str(TEST_MODEL),
        "--prompts", str(prompts), "--name", name, "--batch-size", "7",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result: dict[str, object] = json.loads(run.stdout)
    return result


def _items(base: str) -> dict[int, dict[str, str]]:
    labels = {}
    for item_id in range(1, SLICES + 1):
        answer = httpx.get(f"{base}/v1/items/{item_id}", timeout=30)
        assert answer.status_code == 200, answer.text
        labels[item_id] = answer.json()["metadata"]["labels"]
    return labels


def _filtered(base: str, column: str, value: str) -> set[int]:
    body = {"text": "ct", "k": 100, "filters": {"labels": {column: value}}}
    answer = httpx.post(f"{base}/v1/search/text", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return {hit["id"] for hit in answer.json()["results"]}


def test_labels_become_filters(
    curate_corpus: CurateCorpus, index_copy: Path, tmp_path: Path
) -> None:
    with serve(create_app(settings_for(index_copy))) as base:
        assert _filtered(base, "organ", "liver") == set()  # no such column yet
        result = _label(index_copy, _prompts(tmp_path / "organs.csv", ORGANS))
        assert result["column"] == "organ" and result["items"] == SLICES
        counts = result["labels"]
        assert isinstance(counts, dict) and set(counts) == set(ORGANS)
        assert min(counts.values()) >= 1  # both occur: each filter both keeps and drops

        labels = _items(base)
        for row in labels.values():
            assert row["site"] == "north"  # the sidecar column is kept
            assert row["organ"] in ORGANS
            assert 0.5 <= float(row["organ_probability"]) <= 1.0  # the top of two
        for organ, count in counts.items():
            chosen = {i for i, row in labels.items() if row["organ"] == organ}
            assert len(chosen) == count
            assert _filtered(base, "organ", organ) == chosen  # live, no restart

        # the same probability as /v1/classify with the prompts as labels (one each)
        image = base64.b64encode(curate_corpus.planted.read_bytes()).decode()
        body = {"image": image, "labels": ["ct abdomen liver", "ct chest lung"]}
        classified = httpx.post(f"{base}/v1/classify", json=body, timeout=60).json()
        best = max(classified["results"], key=lambda r: r["probability"])
        assert (
            labels[1]["organ"]
            == {"ct abdomen liver": "liver", "ct chest lung": "lung"}[best["label"]]
        )
        assert float(labels[1]["organ_probability"]) == pytest.approx(best["probability"], abs=5e-4)

        # a rerun with other labels (several prompts each) overwrites the column
        rerun = _label(index_copy, _prompts(tmp_path / "ensemble.csv", ENSEMBLE))
        relabelled = _items(base)
        assert set(rerun["labels"]) == set(ENSEMBLE)  # type: ignore[arg-type]
        assert all(row["organ"] in ENSEMBLE for row in relabelled.values())
        assert all(row["site"] == "north" for row in relabelled.values())
        assert _filtered(base, "organ", "liver") == set()
        total = sum(len(_filtered(base, "organ", organ)) for organ in ENSEMBLE)
        assert total == SLICES


def test_ensembles_average_the_prompts_and_renormalise() -> None:
    rng = np.random.default_rng(1)
    prompts = rng.standard_normal((5, 8)).astype(np.float32)
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    vectors = label_vectors(prompts, [0, 1, 1, 2, 2], 3)
    mean = prompts[1:3].mean(axis=0)
    np.testing.assert_allclose(vectors[1], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    probs = probabilities(rng.uniform(-1, 1, (4, 3)), 4.51)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="at least one prompt"):
        label_vectors(prompts[:2], [0, 0], 2)


@pytest.mark.parametrize(
    ("csv_text", "name", "message"),
    [
        ("label,prompt\nliver,ct liver\nlung,ct lung\n", "1organ", "label column name"),
        ("label,prompt\nliver,ct liver\n", "organ", "at least two labels"),
        ("name,text\nliver,ct liver\nlung,ct lung\n", "organ", "label,prompt"),
        ("label,prompt\nliver,\nlung,ct lung\n", "organ", "line 2"),
    ],
)
def test_bad_prompts_and_names_are_refused(
    curate_corpus: CurateCorpus, tmp_path: Path, csv_text: str, name: str, message: str
) -> None:
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(csv_text)
    run = medsearch(
        "index", "label", "--index", str(curate_corpus.index_dir), "--model", str(TEST_MODEL),
        "--prompts", str(prompts), "--name", name,
    )  # fmt: skip
    assert run.returncode == 2
    assert message in run.stderr
